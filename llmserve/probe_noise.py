"""The model's own numerical noise at its dtype: the yardsticks of the half-precision probe.

In bfloat16 and float16 a correct engine can land further from the reference than the probe's
floor tolerance, because the model's own code does too: the same weights in another order of
accumulation round differently, and on random weights a near-tie of a router or an argmax turns
that into a visible difference. Two measurements of how far transformers moves without anything
being wrong, each over the ids the probe compares at its compared positions (the reference's top
tokens and the token taken there):

- cached vs full (`own_cache_disagreement`): the model's own forward with its own cache, the way
  serving runs it (the first chunk prefilled as a shorter forward, then one token at a time),
  against the reference's full forwards;
- eager vs SDPA (`own_implementations_disagreement`): the reference's attention implementation
  against transformers' other one (SDPA for an eager reference, eager for an SDPA one), one more
  forward per prompt. Not measured where the model cannot switch, where no layer calls
  transformers' attention interface (the switch changes nothing), or where a layer hands the
  attention function a feature transformers' SDPA function does not take (a soft-cap, sinks,
  ALiBi slopes: 5.17 drops a soft-cap silently, later releases raise), since there the difference
  is a missing feature, not rounding, and would widen the tolerance over exactly what it guards.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from llmserve.probe import Reference

NUM_TOP_LOGPROBS = 20
"""Alternatives compared per position, besides the chosen token (the probe's own number)."""
_SWITCHABLE = {"eager": "sdpa", "sdpa": "eager"}
"""The attention implementation compared with the reference's, by the reference's."""


@dataclass(frozen=True)
class OwnNoise:
    """How far the model's own forward moves at this dtype; zeros in float32 (nothing measured)."""

    cached_vs_full: float = 0.0
    implementations: float = 0.0
    """Largest |logprob difference| between the two attention implementations (0 if not measured)."""
    implementations_note: str = ""
    """What `implementations` compared ("eager vs sdpa"), or why it was not measured; "" in float32."""
    float32: float | None = None
    """How far the model's own half-precision forward is from its float32 one (`probe_precise.py`):
    the yardstick of the probe's second comparison, not part of `largest`; None if not measured."""

    @property
    def largest(self) -> float:
        return max(self.cached_vs_full, self.implementations)

    def describe(self) -> str:
        """A fragment of the probe's log line: the yardsticks."""
        text = self._two()
        return text if self.float32 is None else f"{text}, own vs float32 {self.float32:.1e}"

    def _two(self) -> str:
        if not self.implementations_note:
            return f"own cached vs full {self.cached_vs_full:.1e}"
        if self.implementations_note.startswith("not measured"):
            return f"own cached vs full {self.cached_vs_full:.1e}, eager vs sdpa {self.implementations_note}"
        return f"own cached vs full {self.cached_vs_full:.1e}, own {self.implementations_note} " \
               f"{self.implementations:.1e}"


def log_softmax_rows(model: torch.nn.Module, ids: list[int], rows: list[int], device: torch.device,
                     takes_keep: bool) -> torch.Tensor:  # [len(rows), V] float32, CPU
    """One plain forward over `ids` (no cache); the log-softmax of the logits at `rows`."""
    input_ids = torch.tensor([ids], dtype=torch.int64, device=device)
    keep = torch.tensor(rows, dtype=torch.int64, device=device)
    if takes_keep:  # only the kept rows go through the LM head (a long prompt's logits are big)
        logits = model(input_ids=input_ids, use_cache=False, logits_to_keep=keep).logits[0]
    else:  # e.g. remote code: all logits, then the rows
        logits = model(input_ids=input_ids, use_cache=False).logits[0]
        logits = logits[keep.to(logits.device)]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def top_difference(own: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |difference| of two log-softmax rows [V] over the reference's top tokens."""
    top = reference.topk(min(NUM_TOP_LOGPROBS, reference.shape[-1])).indices
    return float((own[top] - reference[top]).abs().max())


def taken_ids(prompt: Sequence[int], kept: Sequence[int], outputs: Sequence[int]) -> list[int]:
    """The token taken at each row the probe compares: the next prompt token at each kept prompt
    position, then the output tokens (`outputs`, as many as there are output rows)."""
    return [prompt[p + 1] for p in kept] + list(outputs)


def compared_difference(own: torch.Tensor, reference: torch.Tensor, taken: int) -> float:
    """Largest |difference| of two log-softmax rows [V] over the ids the probe compares at a
    position: the reference's top tokens and the token taken there (the next prompt token, often
    far down a prompt row, where half-precision rounding weighs more)."""
    return max(top_difference(own, reference), abs(float(own[taken] - reference[taken])))


@torch.inference_mode()
def own_cache_disagreement(model: torch.nn.Module, reference: Reference, device: torch.device) -> float:
    """The largest difference, over the ids the probe compares at its compared positions,
    between the model's own cached forward (the first chunk prefilled as a shorter forward, then one
    token at a time, as `generate` runs) and the reference's full forwards. 0 when the model cannot
    run with its own cache here (the floor tolerance then stands)."""
    from llmserve.generic.forward import ModelForward

    try:
        forward = ModelForward(model, device)
        worst = 0.0
        for prompt, kept, rows in zip(reference.plan.prompts, reference.prompt_positions, reference.prompt_logprobs,
                                      strict=True):
            chunk = min(reference.plan.chunk_tokens, len(prompt) - 1)
            wanted = {p: row for p, row in zip(kept, rows, strict=True)}
            prefilled = forward.prefill(list(prompt[:chunk]), all_logits=True)  # a shorter forward than the reference's
            forward.decode_with_mask = decodes_with_mask(forward, prompt, prefilled.cache, chunk)
            for p, ref in wanted.items():
                if p < chunk:
                    own = torch.log_softmax(prefilled.logits[p].float(), dim=-1).cpu()
                    worst = max(worst, compared_difference(own, ref, prompt[p + 1]))
            cache = prefilled.cache
            for p in range(chunk, max(wanted) + 1):
                mask = torch.ones(1, p + 1, dtype=torch.long, device=device)
                logits, cache = forward.decode(cache, [prompt[p]], mask, [p])
                if p in wanted:
                    own = torch.log_softmax(logits[0].float(), dim=-1).cpu()
                    worst = max(worst, compared_difference(own, wanted[p], prompt[p + 1]))
        return worst if worst == worst else 0.0  # NaN: no yardstick
    except Exception:  # a model whose own cache cannot run this way: no yardstick
        return 0.0


def decodes_with_mask(forward: Any, prompt: Sequence[int], cache: Any, length: int) -> bool:
    """Whether `forward` should decode with an attention mask, `cache` being the prefill of `length`
    tokens of `prompt`, as the generic path learns it: only where the cache grows with the sequence
    (a state-space model's does not, and some such models apply a decode mask to their inputs:
    Mamba's cached forward is then 9.5 off its full one, even in float32)."""
    from llmserve.generic.rows import CannotStack, learn_layout

    if length < 3:
        return True
    try:
        return bool(learn_layout(forward.prefill(list(prompt[:2]), all_logits=False).cache, cache, 2, length).seq_dims)
    except CannotStack:
        return True


@torch.inference_mode()
def own_implementations_disagreement(model: torch.nn.Module, reference: Reference,
                                     device: torch.device) -> tuple[float, str]:
    """The largest difference, over the ids the probe compares at its compared positions and the
    first output token's, between the reference (its attention implementation) and the same
    full forwards with transformers' other attention implementation; and what was compared, or
    "not measured (why)" with 0. The model's attention implementation is restored afterwards."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    setter: Any = getattr(model, "set_attn_implementation", None)
    other = _SWITCHABLE.get(current or "")
    if other is None or setter is None:
        return 0.0, f"not measured (the model's attention is {current!r}, not switchable)"
    incomparable = _why_not_comparable(model)
    if incomparable:
        return 0.0, f"not measured ({incomparable})"
    try:
        setter(other)
    except Exception as exc:  # transformers refuses an implementation the class does not support
        return 0.0, f"not measured ({other} refused: {_one_line(exc)})"
    try:
        if getattr(model.config, "_attn_implementation", None) != other:  # e.g. a class that cannot switch
            return 0.0, f"not measured (the model does not switch to {other})"
        worst = _worst_difference(model, reference, device)
    except Exception as exc:  # the other implementation fails on this model: no yardstick
        return 0.0, f"not measured ({other} forward raised {_one_line(exc)})"
    finally:
        setter(current)
    if worst != worst:  # NaN
        return 0.0, f"not measured ({other} gave NaN)"
    return worst, f"{current} vs {other}"


def _worst_difference(model: torch.nn.Module, reference: Reference, device: torch.device) -> float:
    """One full forward per probe prompt, compared with the reference's rows of that prompt."""
    takes_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    worst = 0.0
    for prompt, kept, rows, outputs, tokens in zip(reference.plan.prompts, reference.prompt_positions,
                                                   reference.prompt_logprobs, reference.output_logprobs,
                                                   reference.tokens, strict=True):
        wanted = [*kept, len(prompt) - 1]  # the last row predicts the first output token
        own = log_softmax_rows(model, list(prompt), wanted, device, takes_keep)  # [len(wanted), V]
        for own_row, ref_row, token in zip(own, [*rows, outputs[0]], taken_ids(prompt, kept, tokens[:1]), strict=True):
            worst = max(worst, compared_difference(own_row, ref_row, token))
    return worst


def _why_not_comparable(model: torch.nn.Module) -> str:
    """Why eager vs SDPA would not measure rounding on this model, "" when it would: its layers hand
    transformers' attention function a feature SDPA's does not take, or none calls that function."""
    from llmserve.engine.attention_contract import inspect_attention

    layers = inspect_attention(model).layers
    if not layers:
        return "no layer calls transformers' attention interface"
    features = {"a soft-cap": any(layer.softcap for layer in layers),
                "attention sinks": any(layer.has_sinks for layer in layers),
                "ALiBi slopes": any(layer.has_alibi for layer in layers)}
    dropped = [name for name, used in features.items() if used]
    return f"its attention has {' and '.join(dropped)}, which transformers' sdpa does not take" if dropped else ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
