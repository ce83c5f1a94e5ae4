"""Pre-quantized FP8 linear layers in a form `torch.compile` traces.

transformers keeps a compressed-tensors FP8 checkpoint in FP8 on GPUs with FP8 matmuls
(`CompressedTensorsFP8Linear`: FP8 weights with one scale per output channel, activations
quantized per row at every call) and multiplies through `torch.nn.functional.scaled_mm`, which
dynamo cannot trace before torch 2.13 (`_scaled_mm_v2`): on torch 2.11 the whole compiled forward
falls back to eager. The same row-wise scaled product is `torch._scaled_mm` with an [M, 1] and a
[1, N] float32 scale, which dynamo and inductor take. `make_traceable` points each such layer's
forward at it, with transformers' own activation quantization: the same function, the same result
(tests/engine/test_fp8_linear.py compares them bit for bit).
"""

from __future__ import annotations

import types

import torch

_FP8 = torch.float8_e4m3fn


def is_rowwise_fp8_linear(module: torch.nn.Module) -> bool:
    """transformers' compressed-tensors FP8 linear layer (FP8 weight, [1, out] float32 scales)."""
    if type(module).__name__ != "CompressedTensorsFP8Linear" or not type(module).__module__.startswith("transformers."):
        return False
    weight, scale = getattr(module, "weight", None), getattr(module, "weight_scale", None)
    return (isinstance(weight, torch.Tensor) and weight.dtype == _FP8 and isinstance(scale, torch.Tensor)
            and scale.dtype == torch.float32 and tuple(scale.shape) == (1, weight.shape[0]))


def make_traceable(model: torch.nn.Module) -> int:
    """Give every compressed-tensors FP8 linear layer of `model` the traceable forward; how many."""
    count = 0
    for module in model.modules():
        if is_rowwise_fp8_linear(module):
            module.forward = types.MethodType(_rowwise_fp8_forward, module)
            count += 1
    return count


def _rowwise_fp8_forward(self: torch.nn.Module, input: torch.Tensor) -> torch.Tensor:
    from transformers.integrations.compressed_tensors import quantize_fp8_per_row

    shape = (*input.shape[:-1], -1)
    rows, row_scales = quantize_fp8_per_row(input.reshape(-1, input.shape[-1]))  # [M, K] FP8, [M] float32
    weight: torch.Tensor = self.weight  # type: ignore[assignment]
    scale: torch.Tensor = self.weight_scale  # type: ignore[assignment]
    bias: torch.Tensor | None = self.bias  # type: ignore[assignment]
    out = torch._scaled_mm(rows, weight.t(), scale_a=row_scales.unsqueeze(-1), scale_b=scale,
                           out_dtype=input.dtype, bias=bias)
    return out.reshape(shape)
