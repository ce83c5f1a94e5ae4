"""Host time of the structured-output mask per engine step (CPU; no model needed).

    python benchmarks/structured_mask.py [--preset tiny|llama-3.2-1b] [--batch 64] [--steps 64]

For a batch of B sequences that each carry a JSON schema, every step times
`StructuredDecoding.token_mask` in its two parts: the host's (`fill_bitmask`: matchers catch up,
bitmask filled; what a GPU worker's host pays too) and the unpacking to a [B, V] bool mask (on the
device where there is one; here on the CPU), then appends one allowed token per row (drawn at random from the mask, as a
sampler would) and goes on. The same batch without grammars times the path every unconstrained step
takes (one pass over the rows' params, None returned). Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from llmserve.engine.request import SamplingParams, Sequence
from llmserve.structured.decoding import StructuredDecoding, allowed_tokens
from llmserve.structured.spec import GrammarSpec
from llmserve.tiny import get_preset, preset_tokenizer

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "address"],
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}},
                         "address": {"type": "object", "required": ["city", "zip"], "additionalProperties": False,
                                     "properties": {"city": {"type": "string"},
                                                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}}


def run(decoding: StructuredDecoding, seqs: list[Sequence], steps: int,
        stop: frozenset[int]) -> tuple[list[float], list[float]]:
    """The host fill's and the unpacking's times per step; a row that draws a stop token is
    replaced by a new sequence (a request joining the batch, as under continuous batching)."""
    generator = torch.Generator().manual_seed(0)
    next_id = len(seqs)
    fills, unpacks = [], []
    for _ in range(steps):
        start = time.perf_counter()
        bitmask = decoding.fill_bitmask(seqs)
        filled = time.perf_counter()
        mask = None if bitmask is None else allowed_tokens(bitmask, decoding.vocab_size)
        fills.append(filled - start)
        unpacks.append(time.perf_counter() - filled)
        if mask is None:
            continue
        for row, seq in enumerate(seqs):
            allowed = mask[row].nonzero().flatten()
            token_id = int(allowed[torch.randint(len(allowed), (1,), generator=generator)])
            if token_id in stop:
                seqs[row] = Sequence(next_id, seq.prompt_ids, seq.params)
                next_id += 1
            else:
                seq.output_ids.append(token_id)
    return fills, unpacks


def _ms(times: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(times) * 1e3, 3), "p99": round(sorted(times)[int(0.99 * (len(times) - 1))] * 1e3, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    tokenizer = preset_tokenizer(get_preset(args.preset))
    vocab_size = len(tokenizer)
    stop = frozenset({tokenizer.convert_tokens_to_ids("<|eot_id|>")})
    decoding = StructuredDecoding(tokenizer, vocab_size, stop)
    spec = GrammarSpec.json_schema(SCHEMA)
    start = time.perf_counter()
    decoding.compiler.compile(GrammarSpec("regex", "a"))  # the tokenizer's vocabulary, read once per worker
    setup_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    decoding.compiler.compile(spec)
    compile_ms = (time.perf_counter() - start) * 1e3
    for grammar in (spec, None):
        seqs = [Sequence(i, [1, 2, 3], SamplingParams(max_tokens=args.steps, grammar=grammar))
                for i in range(args.batch)]
        fills, unpacks = run(decoding, seqs, args.steps, stop)
        fills, unpacks = fills[1:], unpacks[1:]  # the first step builds the matchers
        times = [f + u for f, u in zip(fills, unpacks, strict=True)]
        whole = _ms(times)
        print(json.dumps({"preset": args.preset, "vocab": vocab_size, "batch": args.batch,
                          "grammar": grammar is not None, "tokenizer_setup_ms": round(setup_ms, 1),
                          "schema_compile_ms": round(compile_ms, 1),
                          "mask_ms_mean": whole["mean"], "mask_ms_p99": whole["p99"],
                          "host_fill_ms": _ms(fills), "unpack_ms": _ms(unpacks),
                          "per_row_us": round(statistics.mean(times) * 1e6 / args.batch, 1),
                          "host_fill_per_row_us": round(statistics.mean(fills) * 1e6 / args.batch, 1)}))


if __name__ == "__main__":
    main()
