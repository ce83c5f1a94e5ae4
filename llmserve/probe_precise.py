"""The model's own float32 forward on the probe: the second chance of a half-precision engine.

In bfloat16 the half-precision reference is one rounding of the model among many: an engine that
computes the same function in another order (fp32 accumulation in its attention kernel, a soft-cap
applied before the bf16 cast rather than after) lands as far from it as the reference itself is
from the exact answer, and on random weights, with logits of magnitude 16-32 where one bfloat16
step is 0.125, that can exceed the noise yardsticks (`probe_noise.py`): Gemma 2's soft-cap leaves
no SDPA yardstick at all. So when an engine fails the comparison with the half-precision reference,
it is compared once more with the model's own forward in float32, on the same prefixes (the probe
prompts and the reference's greedy continuation): it passes if it is no further from the float32
answer than twice the distance of the model's own half-precision forward from it (between the
dtype's floor and twice its cap), measured over the ids the comparison reads: each row's top tokens
and the token taken there (the next prompt token sits far down many rows, where a soft-capped
model's bf16 logits are coarsest: random Gemma 2's own bf16 forward is 0.041 from float32 over the
top tokens, 0.113 over both). A missing feature (a soft-cap, a window, sinks) moves it further than
rounding does, and the float32 probe and model matrix hold those features to 5e-3 regardless.

The float32 forward upcasts the weights in place for the duration (bf16 -> fp32 -> bf16 is exact)
and needs their size again in free device memory; a model that does not fit, or whose weights are
not plain half-precision floats (quantized checkpoints), gets no second chance.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llmserve.probe_noise import compared_difference, log_softmax_rows, taken_ids

if TYPE_CHECKING:
    from llmserve.probe import Reference

_MEMORY_MARGIN = 1.25
"""Free device memory needed, as a multiple of the weights' half-precision bytes (the fp32 copy
grows them by that much once each tensor's half-precision storage is freed)."""


@dataclass(frozen=True)
class Precise:
    """Float32 log-probabilities at the reference's positions, rows as the reference's."""

    prompt_logprobs: tuple[torch.Tensor, ...]
    output_logprobs: tuple[torch.Tensor, ...]


def why_no_float32(model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> str:
    """Why the model cannot run a float32 forward here ("" when it can)."""
    params = list(model.parameters())
    if any(not p.is_floating_point() or p.element_size() == 1 for p in params):
        return "quantized weights"
    if any(p.device.type == "meta" for p in params) or len({p.device for p in params}) > 1:
        return "weights on more than one device"
    half = sum(p.numel() * p.element_size() for p in params if p.dtype == dtype)
    if _free_bytes(device) < _MEMORY_MARGIN * half:
        return f"a float32 copy needs {_MEMORY_MARGIN * half / 2**30:.1f} GiB free"
    return ""


def _free_bytes(device: torch.device) -> float:
    """Memory a float32 copy can take on `device`: the GPU's free and cached bytes, or the host's
    available memory (unbounded where psutil, accelerate's dependency, is missing)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        import psutil
    except ImportError:
        return float("inf")
    return float(psutil.virtual_memory().available)


@contextlib.contextmanager
def upcast(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """The model's `dtype` parameters and buffers in float32 for the block, restored exactly after."""
    params = [p for p in model.parameters() if p.dtype == dtype]
    buffers = [(module, name, buf) for module in model.modules() for name, buf in module._buffers.items()
               if buf is not None and buf.dtype == dtype]
    try:
        for p in params:
            p.data = p.data.float()
        for module, name, buf in buffers:
            module._buffers[name] = buf.float()
        yield
    finally:
        for p in params:
            p.data = p.data.to(dtype)
        for module, name, buf in buffers:
            module._buffers[name] = buf


@torch.inference_mode()
def own_float32_rows(model: torch.nn.Module, reference: Reference, device: torch.device) -> tuple[Precise, float]:
    """The model's own forward in float32 on the reference's prefixes (one full forward per prompt,
    for the compared positions and the first output token's, and one per later output token), and
    the half-precision reference's largest difference from those rows, over each row's top tokens
    and the token taken there (the yardstick `OwnNoise.float32`)."""
    takes_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    prompt_rows: list[torch.Tensor] = []
    output_rows: list[torch.Tensor] = []
    own = 0.0
    with upcast(model, reference.dtype):
        for prompt, kept, tokens in zip(reference.plan.prompts, reference.prompt_positions, reference.tokens,
                                        strict=True):
            rows = log_softmax_rows(model, list(prompt), [*kept, len(prompt) - 1], device, takes_keep)
            outputs = [rows[-1]]
            ids = list(prompt) + [tokens[0]]
            for token in tokens[1:]:
                outputs.append(log_softmax_rows(model, ids, [len(ids) - 1], device, takes_keep)[0])
                ids.append(token)
            prompt_rows.append(rows[:-1])
            output_rows.append(torch.stack(outputs))
    # Over the ids the probe compares: each row's top tokens and the token taken there.
    for index, (prompt, kept, tokens) in enumerate(zip(reference.plan.prompts, reference.prompt_positions,
                                                       reference.tokens, strict=True)):
        halves = [*reference.prompt_logprobs[index], *reference.output_logprobs[index]]
        fulls = [*prompt_rows[index], *output_rows[index]]
        for half_row, full_row, token in zip(halves, fulls, taken_ids(prompt, kept, tokens), strict=True):
            own = max(own, compared_difference(half_row, full_row, token))
    return Precise(tuple(prompt_rows), tuple(output_rows)), own
