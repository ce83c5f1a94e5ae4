"""One GEMM for the projections that read the same input: q/k/v of attention, gate/up of the MLP.

At batch 1 a decode step is bound by reading weights, and small GEMMs read them slowly: on an H100
the 2 MB k_proj of a 1B Llama runs at ~0.4 TB/s where the LM head reaches 2.9 TB/s. Concatenating
q, k and v (and gate and up) into one weight turns three (two) launches into one larger GEMM.

The model classes stay stock: their forwards still call `self.q_proj(x)`, `self.k_proj(x)`,
`self.v_proj(x)` in turn. Each of those becomes a `FusedPart` of one `FusedLinear`: the first part
called with a given input runs the whole GEMM and keeps its output; the other parts called with the
same tensor take their column slice of it; once every part has read it, the output is dropped. A
later part called with another input while one waits computes its own slice of the weight (slower,
still right); the first part called with a new input starts over, so a forward that failed midway
leaves nothing stuck. Under `torch.compile` the bookkeeping is traced away: the graph holds
one matmul and its slices.

Applied to plain `nn.Linear` projections on one device (not to quantized or split models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Projection groups to fuse, by attribute name on the module that owns them.
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class FusedLinear(nn.Module):
    """The concatenated weight (and bias) of several Linears sharing an input, and the output of
    the latest input until each part has taken its slice."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.cat([lin.weight.detach() for lin in linears]), requires_grad=False)
        biases = [lin.bias for lin in linears]
        self.bias: nn.Parameter | None = None
        if any(b is not None for b in biases):
            self.bias = nn.Parameter(torch.cat([
                b.detach() if b is not None else torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                             device=lin.weight.device)
                for b, lin in zip(biases, linears, strict=True)
            ]), requires_grad=False)
        bounds = [0]
        for lin in linears:
            bounds.append(bounds[-1] + lin.out_features)
        self.bounds = tuple(bounds)
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._unread = 0

    def part(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Part `index` of the projection of `x`."""
        lo, hi = self.bounds[index], self.bounds[index + 1]
        if self._input is not x:
            if self._unread and index != 0:  # a later part while another input waits: this slice alone
                bias = self.bias[lo:hi] if self.bias is not None else None
                return F.linear(x, self.weight[lo:hi], bias)
            # Nothing waiting, or the first part of a new input (what waited came from a forward
            # that never finished): project the whole group.
            self._input, self._output = x, F.linear(x, self.weight, self.bias)
            self._unread = len(self.bounds) - 1
        assert self._output is not None
        out = self._output[..., lo:hi]
        self._unread -= 1
        if self._unread == 0:  # every part has its slice: keep no activations between steps
            self._input = self._output = None
        return out


class FusedPart(nn.Module):
    """Stands where one of the fused Linears stood."""

    def __init__(self, fused: FusedLinear, index: int) -> None:
        super().__init__()
        self.fused = fused
        self.index = index
        self.in_features = fused.weight.shape[1]
        self.out_features = fused.bounds[index + 1] - fused.bounds[index]

    @property
    def weight(self) -> torch.Tensor:
        """This part's rows of the fused weight (a view)."""
        return self.fused.weight[self.fused.bounds[self.index]:self.fused.bounds[self.index + 1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(self.index, x)


def fuse_projections(model: nn.Module) -> int:
    """Fuse every group of `GROUPS` found on the model's modules; returns how many were fused."""
    count = 0
    for module in list(model.modules()):
        for names in GROUPS:
            linears = _fusable(module, names)
            if linears is None:
                continue
            fused = FusedLinear(linears)
            for index, name in enumerate(names):
                setattr(module, name, FusedPart(fused, index))
            count += 1
    return count


def is_dense(linear: nn.Linear) -> bool:
    """A Linear whose output is `x @ weight.T + bias` and nothing else: pre-quantized checkpoints
    (compressed-tensors FP8, ...) keep the `nn.Linear` class but store 8-bit weights beside their
    scales and replace the instance's forward, and fusing those would drop the scales."""
    names = {name for name, _ in linear.named_parameters(recurse=False)}
    return (names <= {"weight", "bias"} and linear.weight.dtype.is_floating_point
            and linear.weight.element_size() >= 2 and "forward" not in vars(linear)
            and not linear._forward_hooks and not linear._forward_pre_hooks)


def _fusable(module: nn.Module, names: tuple[str, ...]) -> list[nn.Linear] | None:
    """The module's Linears of that group when it has all of them, plain, alike in input size,
    dtype and device; else None."""
    linears = [getattr(module, name, None) for name in names]
    plain = [lin for lin in linears if type(lin) is nn.Linear and is_dense(lin)]
    if len(plain) != len(names):
        return None
    first = plain[0]
    if any((lin.in_features, lin.weight.dtype, lin.weight.device) != (first.in_features, first.weight.dtype,
                                                                       first.weight.device) for lin in plain):
        return None
    return plain
