"""GET /v1/models, /v1/models/{id} and /ready say which engine path serves each model and why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from llmserve.config import parse_config
from tests.api.conftest import live_server


@pytest.fixture(scope="module")
def base_url(tiny_model_dir: Path) -> Iterator[str]:
    """The tiny model three times: the fast path (auto), the generic path (forced), and embeddings;
    "tiny" is served by the first two."""
    common = {"model_path": str(tiny_model_dir), "dtype": "float32", "kv_cache_tokens": 4096}
    config = parse_config({"workers": [
        {**common, "model_names": ["tiny-fast", "tiny"]},
        {**common, "model_names": ["tiny-generic", "tiny"], "engine_path": "generic"},
        {"model_path": str(tiny_model_dir), "model_names": ["tiny-embed"], "task": "embed"},
    ]})
    with live_server(config) as url:
        yield url


def test_ready_shows_each_workers_path(base_url: str) -> None:
    body = httpx.get(base_url.removesuffix("/v1") + "/ready").json()
    paths = [(w["name"], w["engine_path"]) for w in body["workers"]]
    assert paths == [("worker-0", "fast"), ("worker-1", "generic"), ("worker-2", "embedding")]
    reasons = [w["engine_path_reason"] for w in body["workers"]]
    assert reasons[0].startswith("the attention contract is served; probe passed: max |logprob difference| ")
    assert reasons[1].startswith('engine_path = "generic" in the config; probe passed: ')
    assert reasons[2].startswith('task "embed"')


def test_models_carry_the_path_in_an_extra_field_the_sdk_keeps(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="sk-unused", max_retries=0)
    models = {m.id: (m.model_extra or {})["llmserve"] for m in client.models.list()}
    assert set(models) == {"tiny-fast", "tiny", "tiny-generic", "tiny-embed"}
    assert models["tiny-fast"]["engine_path"] == "fast"
    assert models["tiny-fast"]["workers"] == [{"worker": "worker-0", "engine_path": "fast",
                                               "reason": models["tiny-fast"]["reason"]}]
    assert models["tiny-generic"]["engine_path"] == "generic"
    assert models["tiny-embed"]["engine_path"] == "embedding"
    assert models["tiny"]["engine_path"] == "mixed"
    assert [(w["worker"], w["engine_path"]) for w in models["tiny"]["workers"]] == [
        ("worker-0", "fast"), ("worker-1", "generic")]
    one = client.models.retrieve("tiny-generic")
    assert (one.id, one.object, one.owned_by) == ("tiny-generic", "model", "llmserve")
    assert (one.model_extra or {})["llmserve"]["engine_path"] == "generic"
