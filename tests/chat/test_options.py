"""Tests of llmserve/chat/options.py: flags -> ChatOptions -> WorkerConfig."""

from __future__ import annotations

import dataclasses

import pytest

from llmserve.chat import options as options_module
from llmserve.chat.app import as_flags
from llmserve.chat.backends import ChatError, GenerationParams
from llmserve.chat.options import ChatOptions, options_from_args, worker_config, worker_fields
from llmserve.cli import build_parser
from llmserve.config import WorkerConfig
from llmserve.errors import ConfigError


def parse(*argv: str) -> ChatOptions:
    return options_from_args(build_parser().parse_args(["chat", *argv]))


def test_flags_map_onto_options_and_a_one_sequence_worker() -> None:
    options = parse("--model-path", "m", "--device", "cpu", "--dtype", "float32", "--temperature", "0",
                    "--top-p", "0.9", "--max-new-tokens", "7", "--seed", "3", "--max-model-len", "256",
                    "--system", "s", "--no-history", "--debug", "--style", "simple", "--chat-template", "{{x}}")
    assert options.params == GenerationParams(0.0, 0.9, 7)
    assert (options.system, options.keep_history, options.is_debug, options.style) == ("s", False, True, "simple")
    config = worker_config(options)
    assert (config.model_path, config.device, config.dtype, config.seed) == ("m", "cpu", "float32", 3)
    assert (config.max_num_seqs, config.max_model_len, config.chat_template) == (1, 256, "{{x}}")


def test_loading_flags_pass_through_only_when_the_config_has_the_field() -> None:
    options = parse("--model-path", "m", "--device", "cuda", "--load-8bit", "--num-gpus", "2",
                    "--max-gpu-memory", "20GiB", "--cpu-offloading")
    wanted = {"load_8bit": True, "num_gpus": 2, "max_gpu_memory": "20GiB", "cpu_offloading": True}
    if set(wanted) <= {f.name for f in dataclasses.fields(WorkerConfig)}:
        fields = worker_fields(options)
        assert {name: fields[name] for name in wanted} == wanted
    else:
        with pytest.raises(ChatError, match="is not supported by this version of llmserve yet"):
            worker_fields(options)
    assert "load_4bit" not in worker_fields(parse("--model-path", "m", "--device", "cpu"))  # only flags given


def test_a_loading_flag_becomes_its_field_with_the_field_type(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in mapping onto fields every WorkerConfig has: the value is converted to the field's type.
    monkeypatch.setattr(options_module, "LOADING_FLAGS", (("--num-gpus", "block_size"), ("--load-8bit", "nope")))
    config = worker_config(ChatOptions(model_path="m", device="cpu", loading=(("--num-gpus", "32"),)))
    assert config.block_size == 32
    with pytest.raises(ChatError, match="--load-8bit is not supported .* no 'nope' field"):
        worker_config(ChatOptions(model_path="m", device="cpu", loading=(("--load-8bit", True),)))


def test_the_engine_path_flag_forces_a_path() -> None:
    assert worker_config(parse("--model-path", "m", "--device", "cpu", "--engine-path", "generic")).engine_path == "generic"
    assert worker_config(parse("--model-path", "m", "--device", "cpu")).engine_path == "auto"
    with pytest.raises(ChatError, match="--engine-path: only with --model-path"):
        parse("--base-url", "http://h/v1", "--engine-path", "fast")


@pytest.mark.parametrize(("argv", "error"), [
    (("--model-path", "m", "--temperature", "-1"), "--temperature -1.0: expected >= 0"),
    (("--model-path", "m", "--top-p", "0"), "--top-p 0.0"),
    (("--model-path", "m", "--max-new-tokens", "0"), "--max-new-tokens 0"),
    (("--model-path", "m", "--model", "x"), "--model and --api-key go with --base-url"),
    (("--base-url", "http://h/v1", "--chat-template", "t"), "--chat-template: only with --model-path"),
])
def test_bad_flag_combinations(argv: tuple[str, ...], error: str) -> None:
    with pytest.raises(ChatError, match=error.replace("(", r"\(")):
        parse(*argv)


def test_config_errors_are_told_in_flags() -> None:
    with pytest.raises(ConfigError, match='chat.device = "gpu"') as info:
        worker_config(parse("--model-path", "m", "--device", "gpu"))
    assert as_flags(str(info.value)).startswith('--device = "gpu": expected')
    assert as_flags('workers[0].model_path = "/x": no such folder') == '--model-path = "/x": no such folder'

