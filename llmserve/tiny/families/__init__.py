"""Random-weight models of stock transformers classes with a tiny model's tokenizer: what the
model-family matrix (tests/engine/test_model_matrix.py) serves and checks against each model's own
`generate` and forward.

`FAMILIES` (specs.py) names each family's class and tiny config; `weights.py` redraws the tensors
whose default init would hide a feature (soft-caps, sinks, biases, norms). Build with
`build_family_model(family, tokenizer_dir, out_dir, seed, **config_overrides)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmserve.tiny.families.specs import FAMILIES, WINDOW, FamilySpec
from llmserve.tiny.families.weights import make_features_matter_

__all__ = ["FAMILIES", "WINDOW", "FamilySpec", "build_family_model"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "generation_config.json")


def build_family_model(family: str, tokenizer_dir: Path, out_dir: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a random-weight model of `family`'s stock class into `out_dir`, its tiny config updated
    by `overrides`, with the tokenizer (and special-token ids) of the tiny model in `tokenizer_dir`.
    The same seed and shape give the same weights whatever else `overrides` changes; another
    `num_hidden_layers` repeats the family's layer pattern. Returns `out_dir`."""
    spec = FAMILIES[family]
    config = {**spec.config, **overrides}
    if "layer_types" in spec.config and "layer_types" not in overrides:
        config["layer_types"] = _tiled(spec.config["layer_types"], config["num_hidden_layers"])
    base = json.loads((tokenizer_dir / "config.json").read_text())
    config_cls: Any = spec.model_cls.config_class  # the family's own config class, with its own keywords
    model_config = config_cls(
        vocab_size=base["vocab_size"], bos_token_id=base["bos_token_id"], eos_token_id=base["eos_token_id"],
        pad_token_id=base.get("pad_token_id"), **{"tie_word_embeddings": False, **config})
    torch.manual_seed(seed)
    model = spec.model_cls(model_config)
    make_features_matter_(model, spec)
    model.save_pretrained(out_dir)
    for file in _TOKENIZER_FILES:
        if (tokenizer_dir / file).exists():
            (out_dir / file).write_bytes((tokenizer_dir / file).read_bytes())
    return out_dir


def _tiled(layer_types: list[str], num_layers: int) -> list[str]:
    """The family's layer pattern repeated over `num_layers` (a deeper or shallower model keeps its
    interleaving of windowed, global or state-space layers)."""
    return [layer_types[i % len(layer_types)] for i in range(num_layers)]
