"""Compressed-tensors FP8 linear layers made traceable (llmserve/engine/fp8_linear.py)."""

from __future__ import annotations

import pytest
import torch

from llmserve.engine.fp8_linear import is_rowwise_fp8_linear, make_traceable

fp8_module = pytest.importorskip("transformers.integrations.compressed_tensors")


def _fp8_linear(in_features: int, out_features: int, bias: bool, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    layer = fp8_module.CompressedTensorsFP8Linear(in_features, out_features, has_bias=bias)
    weight = torch.randn(out_features, in_features, generator=generator)
    scale = weight.abs().amax(dim=1, keepdim=True) / torch.finfo(torch.float8_e4m3fn).max
    layer.weight.data = (weight / scale).to(torch.float8_e4m3fn)
    layer.weight_scale.data = scale.t().contiguous()
    if bias:
        layer.bias.data = torch.randn(out_features, generator=generator).to(torch.bfloat16)
    return layer.requires_grad_(False)


def test_the_traceable_forward_is_transformers_own_bit_for_bit() -> None:
    model = torch.nn.Sequential(_fp8_linear(64, 96, False, 0), torch.nn.SiLU(), _fp8_linear(96, 32, True, 1))
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = model(x)
        assert make_traceable(model) == 2
        got = model(x)
    assert got.shape == expected.shape and torch.equal(got, expected)
    assert make_traceable(torch.nn.Sequential(torch.nn.Linear(4, 4))) == 0  # plain layers untouched


def test_the_traceable_forward_compiles_in_one_graph() -> None:
    model = torch.nn.Sequential(_fp8_linear(64, 32, False, 0))
    make_traceable(model)
    x = torch.randn(7, 64, dtype=torch.bfloat16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # dynamo traces it; no C++ build
    with torch.inference_mode():
        assert torch.equal(compiled(x), model(x))


def test_only_transformers_fp8_layers_with_channel_scales_qualify() -> None:
    layer = _fp8_linear(16, 8, False, 0)
    assert is_rowwise_fp8_linear(layer)
    layer.weight_scale.data = torch.ones(1, 1)  # a per-tensor scale: not this layer's layout
    assert not is_rowwise_fp8_linear(layer)
    assert not is_rowwise_fp8_linear(torch.nn.Linear(16, 8))
