"""Fused q/k/v and gate/up projections: the stock model computes what it computed before, keeps no
activations between calls, and stays right when parts are called out of order or carry biases."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from llmserve.engine.fused_projections import FusedLinear, FusedPart, fuse_projections


def test_fused_model_matches_the_stock_model(tiny_model_dir) -> None:
    stock = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    fused = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    num_layers = stock.config.num_hidden_layers
    assert fuse_projections(fused) == 2 * num_layers
    attn = fused.model.layers[0].self_attn
    assert isinstance(attn.k_proj, FusedPart) and attn.k_proj.out_features == stock.model.layers[0].self_attn.k_proj.out_features
    torch.testing.assert_close(attn.k_proj.weight, stock.model.layers[0].self_attn.k_proj.weight)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 250, 11]])
    with torch.inference_mode():
        expected = stock(ids).logits
        got = fused(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert all(m._output is None and m._input is None for m in fused.modules() if isinstance(m, FusedLinear))
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in stock.parameters())


def test_parts_out_of_order_and_biases() -> None:
    torch.manual_seed(0)
    linears = [nn.Linear(8, 4, bias=True), nn.Linear(8, 2, bias=False), nn.Linear(8, 3, bias=True)]
    owner = nn.Module()
    for name, lin in zip(("q_proj", "k_proj", "v_proj"), linears, strict=True):
        setattr(owner, name, lin)
    x, y = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    expected = [lin(x) for lin in linears]
    assert fuse_projections(owner) == 1
    parts = [owner.q_proj, owner.k_proj, owner.v_proj]
    with torch.no_grad():
        first = parts[0](x)
        other = parts[1](y)  # another input while x's output still waits for its other parts
        torch.testing.assert_close(other, linears[1](y))
        torch.testing.assert_close(parts[2](x), expected[2])
        torch.testing.assert_close(parts[1](x), expected[1])
        torch.testing.assert_close(first, expected[0])
        # reversed order on a fresh input
        for index in (2, 1, 0):
            torch.testing.assert_close(parts[index](y), linears[index](y))
        assert parts[0].fused._output is None
        parts[0](x)  # a forward that stops after its first projection...
        for index in (0, 1, 2):  # ...leaves the next one unaffected
            torch.testing.assert_close(parts[index](y), linears[index](y))
    assert parts[0].fused._output is None
