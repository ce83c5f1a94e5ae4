"""Grammar-constrained decoding in the engine on the tiny random model: every answer obeys its grammar."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch
from transformers import AutoTokenizer

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_engine
from llmserve.engine.request import SamplingParams
from llmserve.errors import InvalidRequestError
from llmserve.structured.compiler import GrammarCompiler, pack_bits
from llmserve.structured.decoding import allowed_tokens
from llmserve.structured.spec import GrammarSpec

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "home": {"$ref": "#/$defs/place"},
    },
    "required": ["name", "age", "role", "tags", "home"],
    "additionalProperties": False,
    "$defs": {"place": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                                          "ok": {"type": "boolean"}},
                        "required": ["zip", "ok"], "additionalProperties": False}},
}


def _engine(tiny_model_dir, async_scheduling: bool = False):
    engine = build_engine(WorkerConfig(model_path=str(tiny_model_dir), dtype="float32", kv_cache_tokens=8192), 0)
    engine.async_scheduling = async_scheduling
    return engine


def _generate(engine, requests: dict[int, SamplingParams], prompt: list[int]) -> dict[int, tuple[str, str]]:
    """Run the requests together; (text, finish reason) per sequence."""
    for seq_id, params in requests.items():
        engine.add(seq_id, prompt, params)
    texts: dict[int, list[str]] = {i: [] for i in requests}
    reasons: dict[int, str] = {}
    while engine.has_work:
        for out in engine.step():
            texts[out.seq_id].append(out.text)
            if out.finish_reason is not None:
                reasons[out.seq_id] = out.finish_reason
    return {i: ("".join(texts[i]), reasons[i]) for i in requests}


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_json_schema_answers_validate_over_many_seeds(tiny_model_dir, async_scheduling) -> None:
    """24 seeded samples (temperature 1, mixed with free-text rows in one batch) all end with "stop"
    and validate against a nested schema; free rows are not constrained."""
    engine = _engine(tiny_model_dir, async_scheduling)
    spec = GrammarSpec.json_schema(PERSON)
    requests = {i: SamplingParams(max_tokens=200, temperature=1.0, seed=i, grammar=spec) for i in range(24)}
    requests[100] = SamplingParams(max_tokens=20, temperature=1.0, seed=1)
    results = _generate(engine, requests, [1, 2, 3])
    for i in range(24):
        text, reason = results[i]
        assert reason == "stop", (i, text)
        jsonschema.validate(json.loads(text), PERSON)
    assert results[100][1] == "length"
    assert engine.pool.num_free_blocks == engine.pool.num_blocks


def test_async_grammar_rows_run_every_step_and_answer_as_synchronous_ones(tiny_model_dir, monkeypatch) -> None:
    """With async scheduling a grammar row's next forward is queued before its token is read and only
    its draw waits for the mask: every step of a grammar row runs (none is skipped waiting for the
    read-back), and the seeded answers equal the synchronous engine's, free rows among them."""
    from llmserve.engine.engine import LLMEngine

    spec = GrammarSpec.json_schema(PERSON)
    requests = {i: SamplingParams(max_tokens=120, temperature=1.0, seed=i, grammar=spec) for i in range(6)}
    requests[100] = SamplingParams(max_tokens=30, temperature=1.0, seed=1)
    expected = _generate(_engine(tiny_model_dir), requests, [1, 2, 3])
    deferred = []
    real = LLMEngine._draw_deferred

    def counting(self, launched):  # type: ignore[no-untyped-def]
        deferred.append(len(launched.sampling))
        return real(self, launched)

    monkeypatch.setattr(LLMEngine, "_draw_deferred", counting)
    engine = _engine(tiny_model_dir, async_scheduling=True)
    steps = 0
    original_step = engine.step

    def step():  # type: ignore[no-untyped-def]
        nonlocal steps
        steps += 1
        return original_step()

    engine.step = step
    tokens: dict[int, int] = {}
    real_generate_step = engine.step

    def counting_step():  # type: ignore[no-untyped-def]
        outputs = real_generate_step()
        for out in outputs:
            tokens[out.seq_id] = out.num_output_tokens
        return outputs

    engine.step = counting_step
    assert _generate(engine, requests, [1, 2, 3]) == expected
    assert deferred and steps <= max(tokens.values()) + 2  # a step per token: no grammar row waits one out


def test_greedy_rows_with_a_grammar_skip_the_argmax_shortcut(tiny_model_dir) -> None:
    """A greedy grammar row obeys its regex, and a plain greedy row beside it keeps the plain argmax."""
    engine = _engine(tiny_model_dir)
    pattern = r"[a-z]{3,8}@[a-z]{2,5}\.(com|org)"
    requests = {0: SamplingParams(max_tokens=40, temperature=0.0, grammar=GrammarSpec("regex", pattern)),
                1: SamplingParams(max_tokens=10, temperature=0.0)}
    constrained = _generate(engine, requests, [5, 6, 7])
    alone = _generate(_engine(tiny_model_dir), {1: SamplingParams(max_tokens=10, temperature=0.0)}, [5, 6, 7])
    assert constrained[0][1] == "stop" and re.fullmatch(pattern, constrained[0][0])
    assert constrained[1] == alone[1]


def test_choice_and_ebnf_grammar(tiny_model_dir) -> None:
    engine = _engine(tiny_model_dir)
    choice = GrammarSpec.choice(["red", "green", "blue sky"])
    ebnf = GrammarSpec("grammar", 'root ::= "(" [0-9]+ ("+" [0-9]+)* ")"')
    requests = {i: SamplingParams(max_tokens=30, temperature=1.0, seed=i, grammar=choice) for i in range(6)}
    requests.update({10 + i: SamplingParams(max_tokens=60, temperature=1.0, seed=i, grammar=ebnf) for i in range(4)})
    results = _generate(engine, requests, [9, 9])
    assert all(results[i][0] in ("red", "green", "blue sky") and results[i][1] == "stop" for i in range(6))
    for i in range(4):
        text, reason = results[10 + i]
        assert reason in ("stop", "length") and re.fullmatch(r"\([0-9]+(\+[0-9]+)*\)?", text)
    assert engine.structured.num_live == 0 or not engine.has_work


def test_json_object_mode_gives_an_object(tiny_model_dir) -> None:
    engine = _engine(tiny_model_dir)
    spec = GrammarSpec("json_object")
    results = _generate(engine, {i: SamplingParams(max_tokens=300, temperature=0.7, seed=i, grammar=spec)
                                 for i in range(6)}, [1])
    finished = [text for text, reason in results.values() if reason == "stop"]
    assert finished, results
    assert all(isinstance(json.loads(text), dict) for text in finished)


def test_compiler_caches_by_spec_and_names_bad_schemas(tiny_model_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    compiler = GrammarCompiler(tokenizer, 4096, frozenset({4091}), max_cached=2)
    first = compiler.compile(GrammarSpec.json_schema(PERSON))
    assert compiler.compile(GrammarSpec.json_schema(json.loads(json.dumps(PERSON)))) is first
    compiler.compile(GrammarSpec("regex", "a+"))
    compiler.compile(GrammarSpec("regex", "b+"))
    assert compiler.num_cached == 2 and compiler.compile(GrammarSpec.json_schema(PERSON)) is not first
    with pytest.raises(InvalidRequestError, match="regular expression") as info:
        compiler.compile(GrammarSpec("regex", "(unclosed"), param="structured_outputs.regex")
    assert info.value.param == "structured_outputs.regex"
    with pytest.raises(InvalidRequestError, match="JSON schema"):
        compiler.compile(GrammarSpec.json_schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}))
    with pytest.raises(InvalidRequestError, match="grammar"):
        compiler.compile(GrammarSpec("grammar", "root ::= undefined_rule"))


def test_allowed_tokens_unpacks_every_bit() -> None:
    bitmask = torch.tensor([[-1, 0], [1 - 2**31, 0b1000]], dtype=torch.int32)  # 64 tokens, vocab 40
    mask = allowed_tokens(bitmask, 40)
    assert mask.shape == (2, 40)
    assert mask[0, :32].all() and not mask[0, 32:].any()
    assert mask[1].nonzero().flatten().tolist() == [0, 31, 35]
    allowed = torch.rand(70, generator=torch.Generator().manual_seed(0)) > 0.5
    assert torch.equal(allowed_tokens(pack_bits(allowed).unsqueeze(0), 70)[0], allowed)


def test_json_schema_answers_validate_on_the_generic_path(tiny_model_dir) -> None:
    """The generic path applies the same grammar masks: seeded samples beside a free row all validate."""
    engine = build_engine(WorkerConfig(model_path=str(tiny_model_dir), dtype="float32", engine_path="generic"), 0)
    assert engine.serving_path.name == "generic"
    spec = GrammarSpec.json_schema(PERSON)
    requests = {i: SamplingParams(max_tokens=200, temperature=1.0, seed=i, grammar=spec) for i in range(8)}
    requests[100] = SamplingParams(max_tokens=20, temperature=1.0, seed=1)
    results = _generate(engine, requests, [1, 2, 3])
    for i in range(8):
        text, reason = results[i]
        assert reason == "stop", (i, text)
        jsonschema.validate(json.loads(text), PERSON)
    assert results[100][1] == "length"
