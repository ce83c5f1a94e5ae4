"""Throughput with every request carrying a JSON schema against the same row without (issue 15),
over HTTP: `llmserve bench` against `llmserve run`, plus the mask's host time per step.

    python benchmarks/structured_throughput.py --device cpu  --out-dir /tmp/st        # tiny model
    python benchmarks/structured_throughput.py --device cuda --out-dir $OUT           # 1B shape, bf16
    python benchmarks/structured_throughput.py --device cuda --model-path /tmp/llama-3.2-1b-random --out-dir $OUT

Without `--model-path` the model is built first with `llmserve tiny-model` (preset `tiny` on the
CPU, `llama-3.2-1b` on a GPU: random weights, so answers are whatever the mask allows). Both rows
send the same prompts at the same concurrency with `--no-ignore-eos` (a grammar's end is the
answer's end, so neither row forces lengths; the mean answer length is reported beside the rate).
The schema's answers cannot close before 256 tokens, so constrained answers run to `max_tokens` too.
The mask row times `StructuredDecoding.token_mask` in this process for a batch as large as the
concurrency, on the same device and vocabulary: the host work each constrained step adds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import torch
from transformers import AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from llmserve.engine.request import SamplingParams, Sequence  # noqa: E402
from llmserve.structured.decoding import StructuredDecoding  # noqa: E402
from llmserve.structured.spec import GrammarSpec  # noqa: E402

# An order-like object whose answers cannot close before 256 tokens (128 lines of 2+ tokens each), so
# constrained answers run to max_tokens as the unconstrained ones do and the two rows compare.
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id", "kind", "tags", "lines"],
          "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999999},
                         "kind": {"enum": ["order", "refund", "question"]},
                         "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 8}},
                         "lines": {"type": "array", "minItems": 128,
                                   "items": {"type": "string", "pattern": "^[a-z ]{1,12}$"}}}}
CONFIG = """[server]
port = {port}

[[workers]]
model_path = "{model}"
model_names = ["bench"]
device = "{device}"
dtype = "{dtype}"
max_num_seqs = {max_num_seqs}
max_model_len = 2048
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model-path", default=None, help="default: built with `llmserve tiny-model`")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--num-prompts", type=int, default=None, help="default: 2 x concurrency (CPU), 4 x (GPU)")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=None, help="default: 64 (CPU), 256 (GPU)")
    parser.add_argument("--rounds", type=int, default=3, help="each row this many times, in alternating order")
    parser.add_argument("--mask-steps", type=int, default=64)
    parser.add_argument("--mask-only", action="store_true", help="only the mask's host time per step (no server)")
    parser.add_argument("--port", type=int, default=18715)
    parser.add_argument("--out-dir", default=None, help="reports, the server log and results.json")
    return parser.parse_args(argv)


def build_model(device: str, folder: Path) -> Path:
    preset = "tiny" if device == "cpu" else "llama-3.2-1b"
    subprocess.run([sys.executable, "-m", "llmserve", "tiny-model", str(folder), "--preset", preset],
                   check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    return folder


def start_server(args: argparse.Namespace, model: Path, out: Path) -> subprocess.Popen[bytes]:
    config = out / "server.toml"
    config.write_text(CONFIG.format(port=args.port, model=model, device=args.device,
                                    dtype="float32" if args.device == "cpu" else "bfloat16",
                                    max_num_seqs=max(args.concurrency, 8)))
    log = (out / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "llmserve", "run", str(config)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llmserve run exited ({proc.returncode}); see {out / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{args.port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"llmserve run not ready after 300 s; see {out / 'server.log'}")


def bench(args: argparse.Namespace, model: Path, out: Path, name: str, schema: Path | None,
          num_prompts: int) -> dict[str, Any]:
    """One `llmserve bench` run; its JSON report."""
    report = out / f"report-{name}.json"
    command = [sys.executable, "-m", "llmserve", "bench", "--base-url", f"http://127.0.0.1:{args.port}/v1",
               "--model", "bench", "--endpoint", "chat", "--num-prompts", str(num_prompts),
               "--max-concurrency", str(args.concurrency), "--input-len", str(args.input_len),
               "--output-len", str(args.output_len), "--no-ignore-eos", "--tokenizer", str(model),
               "--result-json", str(report), "--no-progress"]
    if schema is not None:
        command += ["--json-schema", str(schema)]
    subprocess.run(command, check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def schema_answer_is_valid(port: int, max_tokens: int) -> bool:
    """One answer under the schema, checked with `jsonschema`: the server decodes under it. (The
    lines are 2 to 4 here, so that the answer closes within `max_tokens`.)"""
    schema = json.loads(json.dumps(SCHEMA))
    schema["properties"]["lines"].update(minItems=2, maxItems=4)
    body = {"model": "bench", "messages": [{"role": "user", "content": "An order, as JSON."}], "max_tokens": max_tokens,
            "temperature": 0, "response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "bench", "schema": schema, "strict": True}}}
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120).json()
    choice = answer["choices"][0]
    if choice["finish_reason"] != "stop":  # cut by max_tokens: the JSON is a valid prefix, nothing to validate
        return False
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)
    return True


def row(name: str, report: dict[str, Any]) -> dict[str, Any]:
    metrics = report["metrics"]
    done = max(metrics["num_completed"], 1)
    return {"row": name, "completed": metrics["num_completed"], "failed": metrics["num_failed"],
            "output_tok_s": round(metrics["output_tokens_per_s"], 1),
            "mean_output_tokens": round(metrics["total_output_tokens"] / done, 1),
            "ttft_ms_median": metrics["ttft"]["median_ms"] and round(metrics["ttft"]["median_ms"], 1)}


def merge(name: str, found: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's rounds: the median rate, every round's rate, the totals."""
    return {"row": name, "completed": sum(r["completed"] for r in found), "failed": sum(r["failed"] for r in found),
            "output_tok_s": statistics.median(r["output_tok_s"] for r in found),
            "output_tok_s_rounds": [r["output_tok_s"] for r in found],
            "mean_output_tokens": round(statistics.mean(r["mean_output_tokens"] for r in found), 1),
            "ttft_ms_median": statistics.median(r["ttft_ms_median"] or 0.0 for r in found)}


def mask_time(model: Path, device: str, batch: int, steps: int) -> dict[str, Any]:
    """`token_mask` host time per step for `batch` rows under the schema (and without)."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    vocab_size = int(json.loads((model / "config.json").read_text())["vocab_size"])
    stop = frozenset({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")})
    decoding = StructuredDecoding(tokenizer, vocab_size, stop)
    spec = GrammarSpec.json_schema(SCHEMA)
    decoding.compiler.compile(spec)
    torch_device = torch.device(device)
    result: dict[str, Any] = {"batch": batch, "vocab": vocab_size}
    for grammar in (spec, None):
        seqs = [Sequence(i, [1, 2, 3], SamplingParams(max_tokens=steps, grammar=grammar)) for i in range(batch)]
        generator = torch.Generator().manual_seed(0)
        times = []
        for step in range(steps + 1):
            start = time.perf_counter()
            mask = decoding.token_mask(seqs, torch_device)  # [B, V] bool on the device, or None
            if step:  # the first step builds the matchers
                times.append(time.perf_counter() - start)
            if mask is None:
                continue
            mask = mask.cpu()
            for i, seq in enumerate(seqs):  # one allowed token per row, as a sampler would draw
                allowed = mask[i].nonzero().flatten()
                token_id = int(allowed[torch.randint(len(allowed), (1,), generator=generator)])
                if token_id in stop:
                    seqs[i] = Sequence(len(seqs) + step * batch + i, seq.prompt_ids, seq.params)
                else:
                    seq.output_ids.append(token_id)
        key = "schema" if grammar is not None else "none"
        result[f"mask_ms_mean_{key}"] = round(statistics.mean(times) * 1e3, 3)
        result[f"mask_ms_p99_{key}"] = round(sorted(times)[int(0.99 * (len(times) - 1))] * 1e3, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    gpu = args.device == "cuda"
    args.num_prompts = args.num_prompts or args.concurrency * (4 if gpu else 2)
    args.output_len = args.output_len or (256 if gpu else 64)
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="structured-throughput-"))
    out.mkdir(parents=True, exist_ok=True)
    # A built model goes to a temporary folder, not OUT: OUT is what comes back from a lent machine.
    model = Path(args.model_path) if args.model_path else build_model(
        args.device, Path(tempfile.mkdtemp(prefix="structured-throughput-model-")))
    if args.mask_only:
        mask = mask_time(model, args.device, args.concurrency, args.mask_steps)
        (out / "mask.json").write_text(json.dumps(mask, indent=2))
        print(json.dumps(mask))
        return 0
    schema = out / "bench_schema.json"
    schema.write_text(json.dumps(SCHEMA))
    server = start_server(args, model, out)
    try:
        warm = min(args.concurrency, 8)  # first requests: CUDA graphs, the grammar compiled and cached
        bench(args, model, out, "warmup-schema", schema, warm)
        bench(args, model, out, "warmup-plain", None, warm)
        runs: dict[str, list[dict[str, Any]]] = {"no schema": [], "JSON schema": []}
        for n in range(args.rounds):  # alternating, so that a drift of the machine hits both rows alike
            order = [("no schema", None), ("JSON schema", schema)][:: 1 if n % 2 == 0 else -1]
            for name, file in order:
                tag = f"{'schema' if file else 'plain'}-{n + 1}"
                runs[name].append(row(name, bench(args, model, out, tag, file, args.num_prompts)))
        rows = [merge(name, found) for name, found in runs.items()]
        valid = schema_answer_is_valid(args.port, 1024)
    finally:
        server.terminate()
        server.wait(timeout=60)
    mask = mask_time(model, args.device, args.concurrency, args.mask_steps)
    results = {"device": args.device, "model": str(model), "concurrency": args.concurrency,
               "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
               "rows": rows, "schema_answer_valid": valid, "mask": mask, "wall_s": round(time.monotonic() - started, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("| row | completed | failed | output tok/s (median; rounds) | mean output tokens | median TTFT (ms) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        rounds = ", ".join(f"{v:,.0f}" for v in r["output_tok_s_rounds"])
        print(f"| {r['row']} | {r['completed']} | {r['failed']} | {r['output_tok_s']:,.0f} ({rounds}) "
              f"| {r['mean_output_tokens']} | {r['ttft_ms_median']} |")
    print(json.dumps(results))
    return 0 if all(r["failed"] == 0 for r in rows) and valid else 1


if __name__ == "__main__":
    sys.exit(main())
