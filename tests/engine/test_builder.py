"""The load-time choice of engine path (llmserve/engine/builder.py): probe, fall back, refuse."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM, LlamaForCausalLM

from llmserve.config import WorkerConfig
from llmserve.engine import attention, builder
from llmserve.engine.builder import build_engine, build_worker_engine
from llmserve.engine.engine import LLMEngine
from llmserve.engine.request import SamplingParams
from llmserve.errors import ConfigError
from llmserve.generic import builder as generic_builder
from llmserve.generic.engine import GenericEngine
from llmserve.loading import load_model
from llmserve.tiny.families import build_family_model

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "generation_config.json")


def _config(model_dir: Path, engine_path: str = "auto") -> WorkerConfig:
    return WorkerConfig(model_path=str(model_dir), dtype="float32", kv_cache_tokens=4096, engine_path=engine_path)


@pytest.fixture
def wrong_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken fast path: paged attention that drops the 1 / sqrt(D) scale (the query scaled up by sqrt(D))."""
    paged = attention.paged_attention
    monkeypatch.setattr(attention, "paged_attention",
                        lambda query, *args, **kwargs: paged(query * query.shape[-1] ** 0.5, *args, **kwargs))


@pytest.fixture(scope="module")
def hybrid_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Granite-4-H's class (Mamba-2 and attention layers), random weights, the tiny tokenizer: the
    paged path runs its attention layers and loses the Mamba state between prefill chunks."""
    base = json.loads((tiny_model_dir / "config.json").read_text())
    config = GraniteMoeHybridConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        layer_types=["mamba", "attention", "mamba", "attention"], mamba_n_heads=8, mamba_d_head=16,
        mamba_d_state=16, mamba_n_groups=1, mamba_expand=2, num_local_experts=0, shared_intermediate_size=128,
        max_position_embeddings=2048, vocab_size=base["vocab_size"], bos_token_id=base["bos_token_id"],
        eos_token_id=base["eos_token_id"], pad_token_id=base.get("pad_token_id"))
    torch.manual_seed(2)
    model = GraniteMoeHybridForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.3 if "embed" in name else 0.08)
    out = tmp_path_factory.mktemp("hybrid")
    model.save_pretrained(out)
    for file in _TOKENIZER_FILES:
        if (tiny_model_dir / file).exists():
            (out / file).write_bytes((tiny_model_dir / file).read_bytes())
    return out


def _greedy(engine: LLMEngine | GenericEngine, prompt: list[int], num_tokens: int) -> list[int]:
    engine.add(0, prompt, SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True))
    tokens: list[int] = []
    while engine.has_work:
        for out in engine.step():
            tokens += out.token_ids
    return tokens


def test_auto_serves_the_tiny_llama_on_the_fast_path(tiny_model_dir: Path) -> None:
    engine = build_engine(_config(tiny_model_dir), 0)
    assert isinstance(engine, LLMEngine) and engine.serving_path is not None
    assert engine.serving_path.name == "fast"
    assert engine.serving_path.reason.startswith("the attention contract is served; probe passed: max |logprob")


def test_auto_moves_a_wrong_fast_path_to_the_generic_path(tiny_model_dir: Path, wrong_scale: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    monkeypatch.setattr(builder, "load_model",
                        lambda config, path, resolved: loads.append(path) or load_model(config, path, resolved))
    engine = build_engine(_config(tiny_model_dir), 0)
    assert isinstance(engine, GenericEngine) and engine.serving_path is not None
    assert engine.serving_path.name == "generic"
    reason = engine.serving_path.reason
    assert reason.startswith("the fast path failed its load-time check: log-probabilities off by ")
    assert "; probe passed: max |logprob difference|" in reason
    # A fresh model for the generic path: the fast path had installed its attention into the first one.
    assert loads == ["workers[0]", "workers[0]"]
    assert engine.forward.model.config._attn_implementation != "llmserve_paged"
    model = load_model(_config(tiny_model_dir)).model
    prompt = [1, 400, 500, 600, 700]
    expected = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                              max_new_tokens=8, do_sample=False, pad_token_id=0)[0, 5:].tolist()
    assert _greedy(engine, prompt, 8) == expected


def test_a_fast_path_that_drops_the_window_goes_generic(tiny_model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mistral = build_family_model("mistral", tiny_model_dir, tmp_path / "mistral")  # every layer windowed
    assert isinstance(build_engine(_config(mistral), 0), LLMEngine)  # the window served: the fast path
    paged = attention.paged_attention
    signature = inspect.signature(paged)

    def without_window(*args: object, **kwargs: object) -> torch.Tensor:
        bound = signature.bind(*args, **kwargs)
        bound.arguments["sliding_window"] = 0
        return paged(*bound.args, **bound.kwargs)

    monkeypatch.setattr(attention, "paged_attention", without_window)
    engine = build_engine(_config(mistral), 0)
    assert isinstance(engine, GenericEngine) and engine.serving_path is not None
    assert engine.serving_path.reason.startswith("the fast path failed its load-time check: ")


def test_forcing_a_wrong_fast_path_is_refused_in_one_line(tiny_model_dir: Path, wrong_scale: None) -> None:
    with pytest.raises(ConfigError) as error:
        build_engine(_config(tiny_model_dir, "fast"), 0)
    message = str(error.value)
    assert message.startswith(f'workers[0].engine_path = "fast": the fast path fails its load-time check on '
                              f"{tiny_model_dir}: log-probabilities off by ")
    assert "\n" not in message


def test_forcing_the_generic_path_probes_it_too(tiny_model_dir: Path) -> None:
    engine = build_engine(_config(tiny_model_dir, "generic"), 0)
    assert isinstance(engine, GenericEngine) and engine.serving_path is not None
    assert engine.serving_path.name == "generic"
    assert engine.serving_path.reason.startswith('engine_path = "generic" in the config; probe passed: ')


def test_a_hybrid_model_goes_to_the_generic_path_and_cannot_be_forced_fast(hybrid_dir: Path) -> None:
    engine = build_engine(_config(hybrid_dir), 0)
    assert isinstance(engine, GenericEngine) and engine.serving_path is not None
    assert engine.serving_path.name == "generic"
    assert engine.serving_path.reason.startswith("the fast path ")
    with pytest.raises(ConfigError, match=r'^workers\[0\]\.engine_path = "fast": the fast path [^\n]*$'):
        build_engine(_config(hybrid_dir, "fast"), 0)


def test_when_both_paths_fail_the_worker_is_refused_naming_both(tiny_model_dir: Path, wrong_scale: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_generic_path(*args: object) -> GenericEngine:
        raise RuntimeError("this model's cache cannot be batched")

    monkeypatch.setattr(generic_builder, "build_generic_engine", no_generic_path)
    with pytest.raises(ConfigError) as error:
        build_engine(_config(tiny_model_dir), 0)
    message = str(error.value)
    assert message.startswith(f"workers[0]: cannot serve {tiny_model_dir} correctly: the fast path failed its "
                              "load-time check: log-probabilities off by ")
    assert message.endswith(", and the generic path fails its load-time check too: it raised RuntimeError: "
                            "this model's cache cannot be batched")
    assert "\n" not in message


def test_a_model_whose_own_forward_fails_is_refused(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("max() arg is an empty sequence")

    monkeypatch.setattr(LlamaForCausalLM, "forward", broken)
    with pytest.raises(ConfigError, match=r"^workers\[0\]: .* fails its own forward on the probe prompts: "
                                          r"ValueError: max\(\) arg is an empty sequence$"):
        build_engine(_config(tiny_model_dir), 0)


def test_embedding_workers_report_their_own_path(tiny_model_dir: Path) -> None:
    config = WorkerConfig(model_path=str(tiny_model_dir), task="embed")
    engine = build_worker_engine(config, 0)
    assert engine.serving_path is not None and engine.serving_path.name == "embedding"
