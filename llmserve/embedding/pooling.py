"""How token states become one vector: read a model folder's pooling spec, and pool.

Sentence-transformers folders describe their pipeline in `modules.json`: a `Transformer`, then a
`Pooling` module (its mode in `<path>/config.json`), then optionally `Normalize`. We support exactly
that pipeline; any other module (`Dense`, `LayerNorm`, ...) would change the vectors, so it is an
error rather than something we silently skip.

Folders without `modules.json` get a documented default (see `default_pooling_spec`):
causal LMs use last-token pooling + L2 normalisation (what decoder embedding models such as
E5-Mistral or gte-Qwen do); other architectures use mean pooling + L2 normalisation.

`include_prompt` is ignored: it only excludes a sentence-transformers *prompt* prefix from pooling,
and we never prepend prompts, so for our inputs it changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import torch
import torch.nn.functional as F

PoolingMode = Literal["mean", "cls", "max", "lasttoken", "weightedmean", "mean_sqrt_len_tokens"]
POOLING_MODES: tuple[str, ...] = get_args(PoolingMode)

# Legacy sentence-transformers (< 6) config keys, one boolean per mode.
_LEGACY_MODE_KEYS: tuple[tuple[str, str], ...] = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)
# Module types (last dotted component) we know how to reproduce.
_TRANSFORMER_MODULES = frozenset({"Transformer"})
_HEAD_MARKERS = ("For", "LMHead")


@dataclass(frozen=True)
class PoolingSpec:
    """How to turn hidden states into one embedding per input."""

    mode: PoolingMode = "lasttoken"
    """Pooling over the non-padding tokens (see `pool`)."""
    normalize: bool = True
    """L2-normalise the pooled vector (a `Normalize` module follows pooling)."""


# ---------------------------------------------------------------- reading a folder


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _module_kind(module: dict[str, Any]) -> str:
    """`sentence_transformers.models.Pooling` -> `Pooling`."""
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def parse_pooling_config(config: dict[str, Any]) -> PoolingMode:
    """The single pooling mode in a `1_Pooling/config.json` dict (new or legacy keys).

    Raises ValueError for unknown modes or several concatenated modes (not supported).
    """
    raw = config.get("pooling_mode")
    if raw is None:
        raw = [mode for key, mode in _LEGACY_MODE_KEYS if config.get(key, False)] or ["mean"]
    modes = [raw] if isinstance(raw, str) else list(raw)
    if len(modes) != 1:
        raise ValueError(f"pooling_mode = {modes!r}: concatenating several pooling modes is not supported")
    mode = modes[0]
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling_mode = {mode!r}: expected one of {POOLING_MODES}")
    return cast(PoolingMode, mode)


def parse_modules(modules: list[dict[str, Any]], model_dir: Path) -> PoolingSpec:
    """A `PoolingSpec` from a parsed `modules.json` list (Transformer -> Pooling -> [Normalize])."""
    kinds = [_module_kind(m) for m in modules]
    if "Pooling" not in kinds:
        raise ValueError(f"{model_dir / 'modules.json'}: no Pooling module (modules: {kinds})")
    pooling_index = kinds.index("Pooling")
    unsupported = [k for k in kinds if k not in _TRANSFORMER_MODULES and k not in ("Pooling", "Normalize")]
    if unsupported or any(k not in _TRANSFORMER_MODULES for k in kinds[:pooling_index]):
        raise ValueError(
            f"{model_dir / 'modules.json'}: module pipeline {kinds} is not supported "
            "(only Transformer -> Pooling -> optional Normalize)"
        )
    pooling_path = model_dir / str(modules[pooling_index].get("path", "")) / "config.json"
    mode = parse_pooling_config(_read_json(pooling_path)) if pooling_path.is_file() else "mean"
    return PoolingSpec(mode=mode, normalize="Normalize" in kinds[pooling_index + 1 :])


def is_causal_lm_config(config: dict[str, Any]) -> bool:
    """True when `config.json` names a causal-LM head (`*ForCausalLM`, `*LMHeadModel`) or `is_decoder`."""
    architectures = config.get("architectures") or []
    return bool(config.get("is_decoder")) or any(
        a.endswith("ForCausalLM") or "LMHead" in a for a in architectures
    )


def default_pooling_spec(config: dict[str, Any]) -> PoolingSpec:
    """The spec for a folder without sentence-transformers files.

    Causal LMs: last-token + L2 (the last token is the only one that attended to the whole input).
    Anything else (BERT-like encoders): mean + L2, the most common sentence-embedding recipe.
    """
    if is_causal_lm_config(config):
        return PoolingSpec(mode="lasttoken", normalize=True)
    return PoolingSpec(mode="mean", normalize=True)


def read_pooling_spec(model_dir: str | Path) -> PoolingSpec:
    """The pooling spec of a model folder: from `modules.json` if present, else the default."""
    model_dir = Path(model_dir)
    modules_path = model_dir / "modules.json"
    if modules_path.is_file():
        return parse_modules(_read_json(modules_path), model_dir)
    config_path = model_dir / "config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    return default_pooling_spec(config)


def detect_embedding_model(model_dir: str | Path) -> bool:
    """Whether a folder holds an embedding model rather than a text generator.

    True when `modules.json` lists a Pooling module (a sentence-transformers model), or when
    `config.json`'s architectures are all bare `*Model` classes (no `For...`/`LMHead` head) and the
    model is not encoder-decoder. A causal LM can still serve embeddings when configured with
    `task = "embed"`; this only decides the default.
    """
    model_dir = Path(model_dir)
    modules_path = model_dir / "modules.json"
    if modules_path.is_file():
        modules = _read_json(modules_path)
        if isinstance(modules, list) and any(_module_kind(m) == "Pooling" for m in modules):
            return True
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        return False
    config = _read_json(config_path)
    architectures = config.get("architectures") or []
    return (
        bool(architectures)
        and not config.get("is_encoder_decoder", False)
        and all(a.endswith("Model") and not any(m in a for m in _HEAD_MARKERS) for a in architectures)
    )


# ---------------------------------------------------------------- pooling


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the unmasked token states.

    hidden: [B, L, D]; mask: [B, L] (1 = token, 0 = padding) -> [B, D]
    """
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def mean_sqrt_len_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the unmasked token states divided by sqrt(number of tokens).

    hidden: [B, L, D]; mask: [B, L] -> [B, D]
    """
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9).sqrt()


def weighted_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean weighted by position: the k-th real token (1-based) has weight k (SGPT-style).

    Positions count from the first real token, so left padding does not shift the weights.
    hidden: [B, L, D]; mask: [B, L] -> [B, D]
    """
    mask_f = mask.to(hidden.dtype)  # [B, L]
    weights = (mask_f.cumsum(dim=1) * mask_f).unsqueeze(-1)  # [B, L, 1]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """State of the first real token (the [CLS] position, also under left padding).

    hidden: [B, L, D]; mask: [B, L] -> [B, D]
    """
    first = mask.to(torch.int32).argmax(dim=1)  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """State of the last real token (works with left or right padding).

    hidden: [B, L, D]; mask: [B, L] -> [B, D]
    """
    seq_len = mask.shape[1]
    from_end = mask.to(torch.int32).flip(dims=[1]).argmax(dim=1)  # [B] distance of last token from end
    last = seq_len - 1 - from_end  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over the unmasked token states.

    hidden: [B, L, D]; mask: [B, L] -> [B, D]
    """
    padding = (mask == 0).unsqueeze(-1)  # [B, L, 1]
    return hidden.masked_fill(padding, float("-inf")).amax(dim=1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, spec: PoolingSpec) -> torch.Tensor:
    """Pool with `spec.mode`, then L2-normalise when `spec.normalize`.

    hidden: [B, L, D]; mask: [B, L] -> [B, D]
    """
    match spec.mode:
        case "mean":
            pooled = mean_pool(hidden, mask)
        case "mean_sqrt_len_tokens":
            pooled = mean_sqrt_len_pool(hidden, mask)
        case "weightedmean":
            pooled = weighted_mean_pool(hidden, mask)
        case "cls":
            pooled = cls_pool(hidden, mask)
        case "lasttoken":
            pooled = last_token_pool(hidden, mask)
        case "max":
            pooled = max_pool(hidden, mask)
        case _:
            raise ValueError(f"pooling mode {spec.mode!r}: expected one of {POOLING_MODES}")
    return F.normalize(pooled, p=2, dim=-1) if spec.normalize else pooled
