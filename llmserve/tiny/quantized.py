"""Pre-quantized FP8 checkpoints written offline from a full-precision one (tests and GPU checks).

Two formats transformers loads: its fine-grained FP8 (`quant_method = "fp8"`: FP8 weights with a
float32 inverse scale per `block` x `block` tile, DeepSeek-V3's layout) and compressed-tensors'
float-quantized FP8 (per-output-channel weight scales, dynamic per-token FP8 activations: what
llm-compressor's FP8_DYNAMIC scheme writes). Every `*proj.weight` is quantized; embeddings, norms
and the LM head stay as they are, as in published checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max


def quantize_blockwise(weight: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[O, I] -> FP8 weight [O, I] and per-tile inverse scales [O/block, I/block] (float32)."""
    out_dim, in_dim = weight.shape
    tiles = weight.float().reshape(out_dim // block, block, in_dim // block, block)
    scale_inv = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12) / FP8_MAX  # [O/b, I/b]
    quantized = (tiles / scale_inv[:, None, :, None]).to(torch.float8_e4m3fn)
    return quantized.reshape(out_dim, in_dim), scale_inv


def dequantize_blockwise(quantized: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """The float32 weight [O, I] an FP8 weight [O, I] and its tile scales [O/b, I/b] stand for."""
    out_dim, in_dim = quantized.shape
    block_out, block_in = out_dim // scale_inv.shape[0], in_dim // scale_inv.shape[1]
    tiles = quantized.float().reshape(scale_inv.shape[0], block_out, scale_inv.shape[1], block_in)
    return (tiles * scale_inv[:, None, :, None]).reshape(out_dim, in_dim)


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[O, I] -> FP8 weight [O, I] and one scale per output channel [O, 1] (float32)."""
    scale = (weight.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)  # [O, 1]
    return (weight.float() / scale).to(torch.float8_e4m3fn), scale


def write_fp8_checkpoint(source: Path, target: Path, block: int = 128) -> Path:
    """A copy of `source` in transformers' fine-grained FP8 format; `block` must divide every projection."""
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in _read_weights(source).items():
        if name.endswith("proj.weight"):
            weights[name], weights[name.removesuffix("weight") + "weight_scale_inv"] = quantize_blockwise(tensor, block)
        else:
            weights[name] = tensor
    return _write(source, target, weights,
                  {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [block, block]})


def write_compressed_fp8_checkpoint(source: Path, target: Path) -> Path:
    """A copy of `source` in compressed-tensors' float-quantized FP8 format (FP8_DYNAMIC)."""
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in _read_weights(source).items():
        if name.endswith("proj.weight"):
            weights[name], weights[name.removesuffix("weight") + "weight_scale"] = quantize_per_channel(tensor)
        else:
            weights[name] = tensor
    scheme = {"num_bits": 8, "type": "float", "symmetric": True}
    return _write(source, target, weights, {
        "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
        "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"],
                                      "weights": {**scheme, "strategy": "channel", "dynamic": False},
                                      "input_activations": {**scheme, "strategy": "token", "dynamic": True}}},
    })


def _read_weights(source: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for path in sorted(source.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    return weights


def _write(source: Path, target: Path, weights: dict[str, torch.Tensor], quantization: dict) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file() and item.suffix != ".safetensors" and not item.name.endswith(".safetensors.index.json"):
            shutil.copy(item, target / item.name)
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = quantization
    (target / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return target
