"""Nothing a battle sends back before the vote tells its two models apart.

Two tiny models that differ in every way a response could show: their tokenizers (4,096 and 1,024
ids, so the same prompt has different token counts and token boundaries), their context (4,096 and
128 tokens) and a reasoning parser on one. The named requests (the controls) show those differences:
usage, a `reasoning_content` field, context errors that quote the maximum. Every body, stream event
and header of both battle sides is checked to carry none of it, and failures to be byte-identical.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmserve.config import Config, parse_config
from llmserve.tiny import PRESETS, preset_config, preset_tokenizer
from llmserve.tiny.model import create_model, generation_config, save_model
from llmserve.tiny.tokenizer import BOS_TOKEN, EOS_TOKEN, EOT_TOKEN, PAD_TOKEN
from llmserve.ui.anonymity import GENERIC_BODY, MAX_HELD_CHARS

from .live import API_KEY, MODELS, LiveServer, live_server

KEY = {"Authorization": f"Bearer {API_KEY}"}
SHORT_CONTEXT = 128
CHUNK_KEYS = {"id", "object", "created", "model", "system_fingerprint", "choices"}
CHOICE_KEYS = {"index", "delta", "logprobs", "finish_reason"}
# Headers whose values may differ between any two responses (the clock, the body's length).
VARYING_HEADERS = {"date", "content-length"}
PROMPT = "Which is bigger, a whale or a mouse? Answer in one word."


def build_small_vocab_model(out_dir: Path) -> Path:
    """A tiny Llama like the `tiny` preset's, with a 1,024-id tokenizer of its own."""
    spec = dataclasses.replace(PRESETS["tiny"], name="tiny-1k", vocab_size=1024, max_position_embeddings=512,
                               corpus_bytes=400_000)
    tokenizer = preset_tokenizer(spec)
    bos, eos, eot, pad = (tokenizer.convert_tokens_to_ids(t) for t in (BOS_TOKEN, EOS_TOKEN, EOT_TOKEN, PAD_TOKEN))
    config = preset_config(spec, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    save_model(create_model(config, seed=1, embedding_std=spec.embedding_std), generation_config(bos, [eos, eot], pad),
               out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def two_model_config(model_a: Path, model_b: Path, votes_path: Path) -> Config:
    workers = [{"model_path": str(model_a), "model_names": [MODELS[0]], "dtype": "float32",
                "kv_cache_tokens": 8192, "max_num_seqs": 4},
               {"model_path": str(model_b), "model_names": [MODELS[1]], "dtype": "float32",
                "kv_cache_tokens": 2048, "max_num_seqs": 4, "max_model_len": SHORT_CONTEXT,
                "reasoning_parser": "think"}]
    return parse_config({"server": {"api_keys": [API_KEY]}, "workers": workers,
                         "ui": {"votes_path": str(votes_path), "battles_per_minute": 0, "votes_per_minute": 0}})


@pytest.fixture(scope="module")
def arena(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model_b = build_small_vocab_model(tmp_path_factory.mktemp("tiny-1k"))
    votes = tmp_path_factory.mktemp("anonymity") / "votes.jsonl"
    with live_server(two_model_config(tiny_model_dir, model_b, votes)) as server:
        yield server


def chat(server: LiveServer, model: str, content: str = PROMPT, **extra: object) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", headers=KEY, timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0,
        **extra})


def new_battle(server: LiveServer) -> dict:
    response = httpx.post(server.url + "/ui/api/battle", headers=KEY, timeout=30)
    assert response.status_code == 200
    return response.json()


def fixed_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in VARYING_HEADERS}


def assert_names_nothing(response: httpx.Response) -> None:
    """No served name anywhere, and no worker, token count or parser field outside the answer's text."""
    assert not any(name in response.text for name in MODELS)
    if response.headers["content-type"].startswith("text/event-stream"):
        events = stream_events(response)
        for event in events:
            for choice in event.get("choices", []):
                choice.get("delta", {}).pop("content", None)
    else:
        events = [response.json()]
        for choice in events[0].get("choices", []):
            choice.get("message", {}).pop("content", None)
    rest = json.dumps(events) + json.dumps(dict(response.headers))
    for word in ("worker", "usage", "tokens", "reasoning", "retry-after", "fp_", "context"):
        assert word not in rest.lower(), word


def stream_events(response: httpx.Response) -> list[dict]:
    lines = response.text.split("\n")
    assert all(not line or line.startswith("data: ") or line == ": ping" for line in lines), lines
    events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def test_the_controls_differ_between_the_two_models(arena: LiveServer) -> None:
    """Named requests keep their details, and the details tell the models apart (what a battle must hide)."""
    a, b = (chat(arena, name).json() for name in MODELS)
    assert a["usage"]["prompt_tokens"] != b["usage"]["prompt_tokens"]
    assert "reasoning_content" not in a["choices"][0]["message"] and "reasoning_content" in b["choices"][0]["message"]
    streamed = chat(arena, MODELS[0], stream=True, stream_options={"include_usage": True})
    assert stream_events(streamed)[-1]["usage"]["prompt_tokens"] == a["usage"]["prompt_tokens"]
    errors = [chat(arena, name, "whale " * repeats).json()["error"]["message"]
              for name, repeats in zip(MODELS, (5000, 200), strict=True)]
    assert "4096" in errors[0] and str(SHORT_CONTEXT) in errors[1]  # the maximum context, quoted


def test_whole_answers_of_both_sides_carry_the_same_fields_and_no_usage(arena: LiveServer) -> None:
    battle = new_battle(arena)
    responses = {side: chat(arena, battle[side]) for side in ("left", "right")}
    for side, response in responses.items():
        assert response.status_code == 200
        assert_names_nothing(response)
        body = response.json()
        assert body == {"id": body["id"], "object": "chat.completion", "created": body["created"],
                        "model": battle[side], "system_fingerprint": None, "choices": [{
                            "index": 0, "message": {"role": "assistant", "content": body["choices"][0]["message"][
                                "content"]}, "logprobs": None, "finish_reason": body["choices"][0]["finish_reason"]}]}
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert fixed_headers(responses["left"]) == fixed_headers(responses["right"])


def test_streams_of_both_sides_carry_the_same_fields_cut_at_words(arena: LiveServer) -> None:
    battle = new_battle(arena)
    for side in ("left", "right"):
        response = chat(arena, battle[side], stream=True, max_tokens=24)
        assert response.status_code == 200
        assert_names_nothing(response)
        chunks = stream_events(response)
        assert all(set(c) == CHUNK_KEYS and set(c["choices"][0]) == CHOICE_KEYS and len(c["choices"]) == 1
                   for c in chunks)
        assert {(c["id"], c["created"], c["model"], c["system_fingerprint"]) for c in chunks} == {
            (chunks[0]["id"], chunks[0]["created"], battle[side], None)}
        deltas = [c["choices"][0]["delta"] for c in chunks]
        assert deltas[0] == {"role": "assistant", "content": ""} and deltas[-1] == {}
        assert all(set(d) == {"content"} for d in deltas[1:-1])
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        pieces = [d["content"] for d in deltas[1:-1]]
        # One chunk per word (or per MAX_HELD_CHARS of a longer one): not one per token.
        assert all(p and (p[-1].isspace() or len(p) == MAX_HELD_CHARS) for p in pieces[:-1])
        assert all(re.search(r"\s\S", p) is None or len(p) == MAX_HELD_CHARS for p in pieces)


@pytest.mark.parametrize("stream", [False, True])
def test_failures_of_either_model_are_byte_identical(arena: LiveServer, stream: bool) -> None:
    """Too long for both (each model's own error quotes its own maximum): the same bytes from both sides."""
    battle = new_battle(arena)
    long = "whale " * 5000  # beyond 4,096 tokens in either tokenizer
    responses = [chat(arena, battle[side], long, stream=stream) for side in ("left", "right")]
    for response in responses:
        assert (response.status_code, response.content) == (400, GENERIC_BODY)
        assert_names_nothing(response)
    assert fixed_headers(responses[0]) == fixed_headers(responses[1])
    assert responses[0].headers["content-length"] == responses[1].headers["content-length"]


def test_a_prompt_only_one_model_can_take_fails_generically_and_voids_the_battle(arena: LiveServer) -> None:
    battle = new_battle(arena)
    long = "whale " * 200  # fits 4,096 tokens, not 128
    responses = {side: chat(arena, battle[side], long) for side in ("left", "right")}
    failed = [side for side, r in responses.items() if r.status_code != 200]
    real = arena.app.state.server.resolve_alias.__self__.model_behind
    assert [real(battle[side]) for side in failed] == [MODELS[1]]
    assert responses[failed[0]].content == GENERIC_BODY
    for response in responses.values():
        assert_names_nothing(response)
    # Which side failed says which model it is: that battle can never be voted on.
    vote = httpx.post(arena.url + "/ui/api/vote", headers=KEY, json={
        "battle_id": battle["battle_id"], "winner": "left", "prompt": long})
    assert (vote.status_code, vote.json()["error"]["code"]) == (400, "battle_not_answered")


@pytest.mark.parametrize(("extra", "param"), [
    ({"logprobs": True, "top_logprobs": 3}, "logprobs"), ({"logit_bias": {"1000": 5}}, "logit_bias"),
    ({"stream": True, "stream_options": {"include_usage": True}}, "stream_options.include_usage"),
    ({"max_tokens": None}, "max_tokens"), ({"n": 2}, "n")])
def test_model_dependent_fields_are_refused_alike_before_either_model(arena: LiveServer, extra: dict,
                                                                      param: str) -> None:
    battle = new_battle(arena)
    responses = [chat(arena, battle[side], **extra) for side in ("left", "right")]
    assert responses[0].content == responses[1].content
    assert (responses[0].status_code, responses[0].json()["error"]["param"]) == (400, param)
    assert all(chat(arena, battle[side]).status_code == 200 for side in ("left", "right"))  # sides not used up
