"""The offline tiny-model builder: a random-weight Llama model plus a real BPE tokenizer.

`build_tiny_model(out_dir, seed, preset)` writes a directory that `AutoModelForCausalLM` and
`AutoTokenizer` load as they would a Hub checkpoint, with no network and no data files:

    config.json, generation_config.json, model.safetensors      (llmserve/tiny/model.py)
    tokenizer.json, tokenizer_config.json, chat_template.jinja  (llmserve/tiny/tokenizer.py)

The output is a pure function of (seed, preset, the Python install): the tokenizer is trained on
the standard library's sources (llmserve/tiny/corpus.py), the weights come from a seeded generator,
so the same seed gives byte-identical files. The tokenizer does not depend on the seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import torch
from transformers import LlamaConfig, PreTrainedTokenizerFast

from llmserve.tiny.model import build_config, count_parameters, create_model, generation_config, save_model
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
) -> LlamaConfig:
    """The model config of `preset` with the given special-token ids (no tokenizer needed)."""
    return build_config(
        vocab_size=preset.vocab_size,
        hidden_size=preset.hidden_size,
        num_layers=preset.num_layers,
        num_heads=preset.num_heads,
        num_kv_heads=preset.num_kv_heads,
        intermediate_size=preset.intermediate_size,
        max_position_embeddings=preset.max_position_embeddings,
        rope_theta=preset.rope_theta,
        tie_word_embeddings=preset.tie_word_embeddings,
        dtype=preset.dtype,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def preset_tokenizer(preset: TinyPreset) -> PreTrainedTokenizerFast:
    """Train the tokenizer of `preset` (it does not depend on the seed)."""
    return build_tokenizer(preset.vocab_size, preset.corpus_bytes, preset.max_position_embeddings)


def build_tiny_model(out_dir: Path, seed: int = 0, preset: str = "tiny") -> Path:
    """Build a random-weight Llama model and its tokenizer into `out_dir` (created if needed).

    Same `seed` and `preset` give byte-identical files. Returns `out_dir`.
    """
    spec = get_preset(preset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = preset_tokenizer(spec)
    bos_id, eos_id, eot_id, pad_id = (
        _token_id(tokenizer, tok) for tok in (BOS_TOKEN, EOS_TOKEN, EOT_TOKEN, PAD_TOKEN)
    )
    config = preset_config(spec, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
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
