"""The offline tiny-model builder: a random-weight Llama (or Qwen2) model plus a real BPE tokenizer.

`build_tiny_model(out_dir, seed, preset)` writes a directory that `AutoModelForCausalLM` and
`AutoTokenizer` load as they would a Hub checkpoint, with no network and no data files:

    config.json, generation_config.json, model.safetensors      (llmserve/tiny/model.py)
    tokenizer.json, tokenizer_config.json, chat_template.jinja  (llmserve/tiny/tokenizer.py)

The `qwen2-0.5b` preset builds a Qwen2ForCausalLM with a ChatML tokenizer instead
(llmserve/tiny/qwen2.py); the other presets are Llamas with Llama 3's special tokens.

The output is a pure function of (seed, preset, the Python install): the tokenizer is trained on
the standard library's sources (llmserve/tiny/corpus.py), the weights come from a seeded generator,
so the same seed gives byte-identical files. The tokenizer does not depend on the seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerFast

from llmserve.tiny.model import build_config, count_parameters, create_model, generation_config, save_model
from llmserve.tiny.qwen2 import (
    build_chatml_tokenizer,
    build_qwen2_config,
    chatml_generation_config,
    chatml_token_ids,
    create_qwen2_model,
)
from llmserve.tiny.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    EOT_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    build_tokenizer,
)

__all__ = [
    "PRESETS",
    "SPECIAL_TOKENS",
    "TinyPreset",
    "build_tiny_model",
    "count_parameters",
    "get_preset",
    "preset_config",
    "preset_tokenizer",
]


@dataclasses.dataclass(frozen=True)
class TinyPreset:
    """The shape of one buildable model."""

    name: str
    """Preset name, as given on the command line."""
    vocab_size: int
    """Total number of token ids, special tokens included."""
    hidden_size: int
    """Width of the residual stream."""
    num_layers: int
    """Number of decoder layers."""
    num_heads: int
    """Number of attention (query) heads."""
    num_kv_heads: int
    """Number of key/value heads (grouped-query attention when below num_heads)."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    max_position_embeddings: int
    """Longest supported sequence, in tokens; also the tokenizer's model_max_length."""
    rope_theta: float
    """RoPE base frequency."""
    tie_word_embeddings: bool
    """Whether the LM head shares the input embedding matrix."""
    dtype: torch.dtype
    """Parameter dtype on disk."""
    corpus_bytes: int
    """How much stdlib source text trains the tokenizer."""
    family: Literal["llama", "qwen2"] = "llama"
    """Model class and tokenizer style: Llama with Llama 3 specials, or Qwen2 (q/k/v biases) with ChatML."""
    embedding_std: float = 0.02
    """Init std of the input embedding (every other matrix uses 0.02, like HF's init).

    Random greedy output looks varied when the next token depends on the current one more than
    on the (slowly changing) attention average over the context. In the 128-wide tiny model the
    0.02 embedding is drowned by attention output and greedy decoding falls into 1-3 attractor
    tokens; 0.1 makes it emit ~45 distinct tokens in 48 steps. With tied embeddings a dominant
    embedding makes the model repeat its input instead, so the tied 1B preset keeps 0.02 (there
    the 2048-wide MLPs already dominate the residual stream).
    """


PRESETS: MappingProxyType[str, TinyPreset] = MappingProxyType(
    {
        "tiny": TinyPreset(
            name="tiny",
            vocab_size=4096,
            hidden_size=128,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=384,
            max_position_embeddings=4096,
            rope_theta=10_000.0,
            tie_word_embeddings=False,
            dtype=torch.float32,
            corpus_bytes=2_000_000,
            embedding_std=0.1,
        ),
        # The shape of meta-llama/Llama-3.2-1B (1,235,814,400 parameters), with random weights.
        "llama-3.2-1b": TinyPreset(
            name="llama-3.2-1b",
            vocab_size=128_256,
            hidden_size=2048,
            num_layers=16,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=8192,
            max_position_embeddings=131_072,
            rope_theta=500_000.0,
            tie_word_embeddings=True,
            dtype=torch.bfloat16,
            corpus_bytes=16_000_000,  # the whole filtered stdlib (~11 MB) teaches ~42k merges
        ),
        # The shape of Qwen/Qwen2-0.5B (494,032,768 parameters), with random weights: the issue 18
        # model where compute, not host overhead, dominates a CPU step.
        "qwen2-0.5b": TinyPreset(
            name="qwen2-0.5b",
            vocab_size=151_936,
            hidden_size=896,
            num_layers=24,
            num_heads=14,
            num_kv_heads=2,
            intermediate_size=4864,
            max_position_embeddings=32_768,
            rope_theta=1_000_000.0,
            tie_word_embeddings=True,
            dtype=torch.bfloat16,
            corpus_bytes=16_000_000,
            family="qwen2",
        ),
    }
)


def get_preset(name: str) -> TinyPreset:
    """The preset called `name`; ValueError naming the choices otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"preset = {name!r}: expected one of {sorted(PRESETS)}") from None


def preset_config(
    preset: TinyPreset, *, bos_token_id: int, eos_token_id: int, pad_token_id: int
) -> PretrainedConfig:
    """The model config of `preset` with the given special-token ids (no tokenizer needed):
    a `LlamaConfig`, or a `Qwen2Config` for the qwen2 family."""
    build = build_qwen2_config if preset.family == "qwen2" else build_config
    return build(
        **_shape_kwargs(preset),
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def _shape_kwargs(preset: TinyPreset) -> dict[str, Any]:
    """The config builders' shape keywords, from `preset`."""
    return {
        "vocab_size": preset.vocab_size,
        "hidden_size": preset.hidden_size,
        "num_layers": preset.num_layers,
        "num_heads": preset.num_heads,
        "num_kv_heads": preset.num_kv_heads,
        "intermediate_size": preset.intermediate_size,
        "max_position_embeddings": preset.max_position_embeddings,
        "rope_theta": preset.rope_theta,
        "tie_word_embeddings": preset.tie_word_embeddings,
        "dtype": preset.dtype,
    }


def preset_tokenizer(preset: TinyPreset) -> PreTrainedTokenizerFast:
    """Train the tokenizer of `preset` (it does not depend on the seed)."""
    if preset.family == "qwen2":
        return build_chatml_tokenizer(preset.vocab_size, preset.corpus_bytes, preset.max_position_embeddings)
    return build_tokenizer(preset.vocab_size, preset.corpus_bytes, preset.max_position_embeddings)


def build_tiny_model(out_dir: Path, seed: int = 0, preset: str = "tiny") -> Path:
    """Build a random-weight model (Llama, or Qwen2 for the qwen2 family) and its tokenizer into
    `out_dir` (created if needed).

    Same `seed` and `preset` give byte-identical files. Returns `out_dir`.
    """
    spec = get_preset(preset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = preset_tokenizer(spec)
    if spec.family == "qwen2":
        bos_id, eos_id, pad_id = chatml_token_ids(tokenizer)
        qwen2_config = build_qwen2_config(
            **_shape_kwargs(spec), bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id
        )
        qwen2_model = create_qwen2_model(qwen2_config, seed=seed, embedding_std=spec.embedding_std)
        save_model(qwen2_model, chatml_generation_config(tokenizer), out_dir)
        tokenizer.save_pretrained(out_dir)
        return out_dir
    bos_id, eos_id, eot_id, pad_id = (
        _token_id(tokenizer, tok) for tok in (BOS_TOKEN, EOS_TOKEN, EOT_TOKEN, PAD_TOKEN)
    )
    config = build_config(
        **_shape_kwargs(spec), bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id
    )
    model = create_model(config, seed=seed, embedding_std=spec.embedding_std)
    gen_config = generation_config(bos_id, [eos_id, eot_id], pad_id)
    save_model(model, gen_config, out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of a special token that must exist."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id < 0:
        raise RuntimeError(f"special token {token!r} is missing from the tokenizer")
    return token_id
