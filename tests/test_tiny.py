"""Tests for llmserve/tiny: the offline tiny-model builder and its CLI subcommand."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from llmserve.tiny import (
    PRESETS,
    build_tiny_model,
    count_parameters,
    get_preset,
    preset_config,
    preset_tokenizer,
)
from llmserve.tiny.corpus import read_corpus
from llmserve.tiny.model import save_model
from llmserve.tiny.qwen2 import (
    CHATML_SPECIAL_TOKENS,
    build_chatml_tokenizer,
    build_qwen2_config,
    chatml_generation_config,
    chatml_token_ids,
    create_qwen2_model,
)
from llmserve.tiny.tokenizer import SPECIAL_TOKENS, build_tokenizer

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
]


def _tokenizer(model_dir: Path) -> Any:
    """`AutoTokenizer` of `model_dir`, typed loosely: transformers' return unions defeat mypy."""
    return AutoTokenizer.from_pretrained(model_dir)


def _file_bytes(model_dir: Path) -> dict[str, bytes]:
    """Every file of a model directory, by name."""
    return {path.name: path.read_bytes() for path in sorted(model_dir.iterdir())}


def test_loads_with_auto_classes(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = _tokenizer(tiny_model_dir)
    config = model.config
    assert isinstance(model, LlamaForCausalLM)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (128, 4, 384)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.vocab_size == len(tokenizer) == 4096
    assert config.max_position_embeddings == tokenizer.model_max_length == 4096
    assert config.rope_parameters["rope_theta"] == 10_000.0
    assert config.tie_word_embeddings is False
    assert model.dtype == torch.float32
    assert count_parameters(tiny_model_dir) == sum(p.numel() for p in model.parameters())
    assert {path.name for path in tiny_model_dir.iterdir()} == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }


def test_special_token_ids(tiny_model_dir: Path) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(4096 - len(SPECIAL_TOKENS), 4096))  # specials last, in order
    bos_id, eos_id, eot_id, _start, _end, pad_id = ids
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|pad|>",
    )
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        bos_id,
        eos_id,
        pad_id,
    )
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert generation["bos_token_id"] == bos_id
    assert generation["eos_token_id"] == [eos_id, eot_id]
    assert generation["pad_token_id"] == pad_id
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        bos_id,
        eos_id,
        pad_id,
    )


def test_plain_text_gets_one_bos_and_round_trips(tiny_model_dir: Path) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    text = "def greet(name):\n    return f'héllo {name} 👋'  # ünïcödé\n"
    with_bos = tokenizer(text)["input_ids"]
    without_bos = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert with_bos == [tokenizer.bos_token_id, *without_bos]
    assert tokenizer.decode(without_bos) == text
    assert tokenizer.decode(with_bos, skip_special_tokens=True) == text


def test_chat_template_renders_llama3_layout(tiny_model_dir: Path) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    without_prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert without_prompt == text.removesuffix("<|start_header_id|>assistant<|end_header_id|>\n\n")
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}
    ]
    assert "\n\nHi there<|eot_id|>" in tokenizer.apply_chat_template(parts, tokenize=False)


def test_chat_template_tokenizes_with_exactly_one_bos(tiny_model_dir: Path) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    start_id, end_id, eot_id = tokenizer.convert_tokens_to_ids(
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    )
    assert ids.count(start_id) == ids.count(end_id) == 3
    assert ids.count(eot_id) == 2


def test_every_id_decodes_to_text(tiny_model_dir: Path) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    assert all(tokenizer.decode([token_id]) for token_id in range(len(tokenizer)))


def test_greedy_generation_is_varied(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = _tokenizer(tiny_model_dir)
    inputs = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    new_ids = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(new_ids) == 24  # no EOS straight away
    assert len(set(new_ids)) >= 12  # not collapsed onto one repeated token
    again = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    assert torch.equal(output, again)


def test_same_seed_gives_identical_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    rebuilt = build_tiny_model(tmp_path / "again", seed=0)
    assert _file_bytes(rebuilt) == _file_bytes(tiny_model_dir)


def test_cli_builds_another_seed(tiny_model_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "seed1"
    result = subprocess.run(
        [sys.executable, "-m", "llmserve", "tiny-model", str(out_dir), "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout == f"{out_dir} 1,836,160 parameters\n"
    seed0, seed1 = _file_bytes(tiny_model_dir), _file_bytes(out_dir)
    assert seed1["model.safetensors"] != seed0["model.safetensors"]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        assert seed1[name] == seed0[name]  # the seed only moves the weights


def test_unknown_preset_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preset = 'llama-9t'"):
        build_tiny_model(tmp_path, preset="llama-9t")


def test_llama_3_2_1b_config_matches_the_real_shape() -> None:
    preset = get_preset("llama-3.2-1b")
    config = preset_config(preset, bos_token_id=128250, eos_token_id=128251, pad_token_id=128255)
    assert isinstance(config, LlamaConfig)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400  # as meta-llama/Llama-3.2-1B
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (config.num_key_value_heads, config.head_dim, config.max_position_embeddings) == (8, 64, 131_072)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 500_000.0}
    assert config.dtype == torch.bfloat16


def test_llama_3_2_1b_tokenizer_fills_the_whole_vocabulary() -> None:
    preset = PRESETS["llama-3.2-1b"]
    tokenizer = build_tokenizer(preset.vocab_size, preset.corpus_bytes, preset.max_position_embeddings)
    assert len(tokenizer) == 128_256
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(128_250, 128_256))
    assert all(tokenizer.decode([token_id]) for token_id in range(len(tokenizer)))
    generator = torch.Generator().manual_seed(0)
    random_ids = torch.randint(0, 128_250, (2000,), generator=generator).tolist()
    text = str(tokenizer.decode(random_ids))
    best_s = min(_time_encode(tokenizer, text) for _ in range(5))
    assert best_s < 0.25  # ~3 ms on an idle core; generous for shared CI machines


def test_small_corpus_is_topped_up_with_filler_merges() -> None:
    tokenizer = build_tokenizer(vocab_size=6000, corpus_bytes=100_000, model_max_length=1024)
    assert len(tokenizer) == 6000
    assert all(tokenizer.decode([token_id]) for token_id in range(len(tokenizer)))


def test_corpus_respects_the_byte_budget() -> None:
    texts = read_corpus(50_000)
    assert sum(len(text.encode("utf-8", errors="surrogatepass")) for text in texts) <= 50_000 + 3 * len(texts)
    assert texts == read_corpus(50_000)


def _time_encode(tokenizer: PreTrainedTokenizerBase, text: str) -> float:
    """Seconds one call of `tokenizer(text)` takes."""
    start_s = time.perf_counter()
    tokenizer(text)
    return time.perf_counter() - start_s


def test_cli_preset_names_match_the_builder() -> None:
    from llmserve.cli.tiny_model import PRESET_NAMES
    from llmserve.tiny import PRESETS

    assert sorted(PRESET_NAMES) == sorted(PRESETS)


def test_qwen2_0_5b_config_matches_the_real_shape() -> None:
    preset = get_preset("qwen2-0.5b")
    config = preset_config(preset, bos_token_id=151933, eos_token_id=151935, pad_token_id=151933)
    assert isinstance(config, Qwen2Config)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == 494_032_768  # as Qwen/Qwen2-0.5B
    assert model.lm_head.weight is model.model.embed_tokens.weight
    attention = model.model.layers[0].self_attn
    assert [proj.bias is not None for proj in (attention.q_proj, attention.k_proj, attention.v_proj)] == [
        True,
        True,
        True,
    ]
    assert attention.o_proj.bias is None
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (896, 24, 4864)
    assert (config.num_attention_heads, config.num_key_value_heads, attention.head_dim) == (14, 2, 64)
    assert (config.vocab_size, config.max_position_embeddings, config.rms_norm_eps) == (151_936, 32_768, 1e-6)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1_000_000.0}
    assert config.sliding_window is None
    assert config.dtype == torch.bfloat16


def test_chatml_tokenizer_layout_and_template() -> None:
    tokenizer: Any = build_chatml_tokenizer(vocab_size=6000, corpus_bytes=100_000, model_max_length=1024)
    assert len(tokenizer) == 6000
    assert tokenizer.convert_tokens_to_ids(list(CHATML_SPECIAL_TOKENS)) == [5997, 5998, 5999]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        None,
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert all(tokenizer.decode([token_id]) for token_id in range(len(tokenizer)))
    text = "def f(x):\n    return 'ünï' * x\n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # no BOS: Qwen2 has none
    rendered = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)["input_ids"]
    assert ids.count(5998) == 3 and ids.count(5999) == 2  # each marker is one token


def test_qwen2_model_is_seeded_biased_and_loads(tmp_path: Path) -> None:
    tokenizer: Any = build_chatml_tokenizer(vocab_size=1024, corpus_bytes=50_000, model_max_length=512)
    bos_id, eos_id, pad_id = chatml_token_ids(tokenizer)
    config = build_qwen2_config(
        vocab_size=1024, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
        max_position_embeddings=512, rope_theta=1e6, tie_word_embeddings=True, dtype=torch.float32,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
    )  # fmt: skip
    model = create_qwen2_model(config, seed=0, embedding_std=0.02)
    again = create_qwen2_model(config, seed=0, embedding_std=0.02)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    q_bias = model.model.layers[0].self_attn.q_proj.bias.detach()
    assert 0.01 < float(q_bias.std()) < 0.03  # drawn like the weights, not a norm's 1.0
    assert torch.equal(model.model.norm.weight, torch.ones(64))
    save_model(model, chatml_generation_config(tokenizer), tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, Qwen2ForCausalLM)
    assert torch.equal(loaded.model.layers[0].self_attn.q_proj.bias, q_bias)
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [eos_id, bos_id] == [1023, 1021]
    reloaded = _tokenizer(tmp_path)  # transformers picks its Qwen2 tokenizer class from config.json
    assert all(reloaded.decode([token_id]) for token_id in range(1024))
    text = "def f(x):\n    return 'ünï' * x\n"
    assert reloaded.decode(reloaded(text)["input_ids"]) == text
    inputs = reloaded.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt")
    output = loaded.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 8


def test_qwen2_0_5b_tokenizer_fills_the_whole_vocabulary() -> None:
    tokenizer = preset_tokenizer(get_preset("qwen2-0.5b"))
    assert len(tokenizer) == 151_936  # every embedding row is a token: any generated id decodes
    assert tokenizer.convert_tokens_to_ids(list(CHATML_SPECIAL_TOKENS)) == [151_933, 151_934, 151_935]
    assert all(tokenizer.decode([token_id]) for token_id in range(len(tokenizer)))
