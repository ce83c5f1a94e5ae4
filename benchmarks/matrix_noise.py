"""The model matrix's bf16 yardsticks (`gpu_model_matrix.py`): how far transformers moves from its own
eager forward on the sequences our path served, and, for a model with experts, whether its routers
chose other experts where our path differed most from the reference.

- `cached_rows`: transformers' own forward with its own cache, teacher-forced over the served tokens
  (the prompt prefilled, then the tokens one at a time, as `generate` decodes), to set against its
  full forward (the reference): the cached-vs-full yardstick of the load-time probe, on these prompts.
- `router_check`: the worst position of the served sequences (largest |logprob difference| between
  our path and the eager reference) is looked at in both forwards with hooks on every router: a
  module named `...router` or `...gate` whose output holds a tensor of width `num_experts` (the
  logits; the selection is the integer tensor of width top-k it returns beside them, else the top-k
  of the logits). Our side runs the served sequence as one prompt, with prompt logprobs, through an
  engine the worker's builder makes for the same model without CUDA graphs or compilation (hooks do
  not fire inside a replayed graph), so its logprob at that position is reported next to the served
  one: where the two are close, the check saw the computation that differed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmserve.engine.request import SamplingParams
from llmserve.generic.forward import ModelForward
from llmserve.probe_noise import decodes_with_mask

Key = tuple[tuple[int, ...], tuple[int, ...]]
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "experts_per_token", "top_k")


def cached_rows(model: Any, prompts: list[list[int]], runs: list[list[list[int]]]) -> dict[Key, torch.Tensor]:
    """log_softmax rows [N, V] at each run's tokens' positions, from the model's own cached forward."""
    forward = ModelForward(model, model.device)
    out: dict[Key, torch.Tensor] = {}
    with torch.inference_mode():
        for run in runs:
            for prompt, tokens in zip(prompts, run, strict=True):
                key = (tuple(prompt), tuple(tokens))
                if key in out:
                    continue
                prefilled = forward.prefill(prompt, all_logits=False)
                forward.decode_with_mask = decodes_with_mask(forward, prompt, prefilled.cache, len(prompt))
                rows, cache = [prefilled.logits[-1]], prefilled.cache
                for step, token in enumerate(tokens[:-1]):
                    position = len(prompt) + step
                    mask = torch.ones(1, position + 1, dtype=torch.long, device=model.device)
                    logits, cache = forward.decode(cache, [token], mask, [position])
                    rows.append(logits[0])
                out[key] = torch.stack(rows).float().log_softmax(-1).cpu()
    return out


def worst_position(rows: dict[Key, torch.Tensor], prompts: list[list[int]], run: list[list[int]],
                   logprobs: list[list[float]]) -> tuple[int, int, float]:
    """(prompt index, output step, |difference|) where the served logprob is furthest from the reference."""
    worst = (0, 0, -1.0)
    for i, (prompt, tokens) in enumerate(zip(prompts, run, strict=True)):
        row = rows[(tuple(prompt), tuple(tokens))]  # [N, V]
        chosen = row.gather(-1, torch.tensor(tokens)[:, None])[:, 0]  # [N]
        diffs = (torch.tensor(logprobs[i]) - chosen).abs()  # [N]
        step = int(diffs.argmax())
        if float(diffs[step]) > worst[2]:
            worst = (i, step, float(diffs[step]))
    return worst


def moe_shape(config: Any) -> tuple[int, int] | None:
    """(number of experts, experts per token) from a config, None for a model without experts."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    experts = next((v for k in _EXPERT_KEYS if isinstance(v := getattr(text, k, None), int) and v > 1), None)
    top_k = next((v for k in _TOP_K_KEYS if isinstance(v := getattr(text, k, None), int) and v > 0), None)
    return (experts, top_k) if experts and top_k else None


@dataclass
class RouterRecorder:
    """Forward hooks on a model's routers; per router, its logits [T, E] and sorted selection [T, k]
    of every call, on the CPU."""

    num_experts: int
    top_k: int
    logits: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    selections: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    source: set[str] = field(default_factory=set)
    handles: list[Any] = field(default_factory=list)

    def attach(self, model: torch.nn.Module) -> RouterRecorder:
        for name, module in model.named_modules():
            if name.endswith(("router", "gate")):
                self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, name: str) -> Callable[..., None]:
        def record(module: torch.nn.Module, args: Any, output: Any) -> None:
            tensors = [t for t in (output if isinstance(output, tuple) else (output,)) if isinstance(t, torch.Tensor)]
            logits = next((t for t in tensors if t.is_floating_point() and t.shape[-1] == self.num_experts), None)
            if logits is None:  # a gate that is not a router (e.g. a gated norm)
                return
            flat = logits.detach().reshape(-1, self.num_experts).float().cpu()  # [T, E]
            indices = next((t for t in tensors if not t.is_floating_point() and t.shape[-1] == self.top_k), None)
            if indices is not None:
                selection = indices.detach().reshape(-1, self.top_k).cpu()
                self.source.add("the router's own indices")
            else:
                selection = flat.topk(self.top_k, dim=-1).indices
                self.source.add("top-k of the router's logits")
            self.logits.setdefault(name, []).append(flat)
            self.selections.setdefault(name, []).append(selection.sort(-1).values)
        return record

    def per_position(self, num_positions: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | str:
        """Per router, (logits [L, E], selection [L, k]) over the positions run, or why not aligned."""
        out = {}
        for name, calls in self.logits.items():
            logits, selection = torch.cat(calls), torch.cat(self.selections[name])
            if logits.shape[0] != num_positions:
                return f"{name}: {logits.shape[0]} rows for {num_positions} positions"
            out[name] = (logits, selection)
        return out


def _margin(logits: torch.Tensor, top_k: int) -> float:
    """Gap between the k-th and the (k+1)-th router logit: how near the selection was to a tie."""
    values = logits.topk(min(top_k + 1, logits.shape[-1])).values
    return float(values[top_k - 1] - values[top_k]) if values.shape[0] > top_k else float("inf")


def engine_prompt_logprobs(engine: Any, ids: list[int]) -> list[float]:
    """Our path's logprob of each token of `ids` after the first, prefilled as one prompt."""
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, prompt_logprobs=1)
    engine.add(0, ids, params)
    entries: list[Any] = []
    while engine.has_work:
        for out in engine.step():
            if out.error is not None:
                raise RuntimeError(out.error)
            entries = entries or list(out.prompt_logprobs or [])
    return [entry.logprob for entry in entries[1:]]


def router_check(reference_model: Any, engine: Any, engine_model: torch.nn.Module, prompt: list[int],
                 tokens: list[int], step: int, served_diff: float) -> dict[str, Any]:
    """At position len(prompt) - 1 + step (the one predicting tokens[step]) and over the sequence's
    output positions: do the routers of our path and of the reference choose the same experts?"""
    shape = moe_shape(reference_model.config)
    assert shape is not None
    ids = prompt + tokens
    first, worst = len(prompt) - 1, len(prompt) - 1 + step  # rows predicting tokens[0] and tokens[step]
    theirs = RouterRecorder(*shape).attach(reference_model)
    try:
        with torch.inference_mode():
            logits = reference_model(torch.tensor([ids], device=reference_model.device), use_cache=False).logits[0]
    finally:
        theirs.detach()
    reference = logits.float().log_softmax(-1).cpu()  # [L, V]
    ours = RouterRecorder(*shape).attach(engine_model)
    try:
        our_logprobs = torch.tensor(engine_prompt_logprobs(engine, ids))  # [L - 1]: row p predicts ids[p + 1]
    finally:
        ours.detach()
    result: dict[str, Any] = {"prompt_tokens": len(prompt), "step": step, "served_diff": served_diff,
                              "selection_from": sorted(theirs.source | ours.source)}
    targets = torch.tensor(ids[1:])[:, None]
    diffs = (our_logprobs - reference[:-1].gather(-1, targets)[:, 0]).abs()  # [L - 1]
    result["check_diff_at_worst"] = float(diffs[worst])
    their_rows, our_rows = theirs.per_position(len(ids)), ours.per_position(len(ids))
    if isinstance(their_rows, str) or isinstance(our_rows, str) or not their_rows:
        result["error"] = (f"reference: {their_rows}" if isinstance(their_rows, str) else
                           f"ours: {our_rows}" if isinstance(our_rows, str) else "no router module found")
        return result
    routers = [name for name in their_rows if name in our_rows]
    flips = {name: (their_rows[name][1] != our_rows[name][1]).any(-1) for name in routers}  # [L] per router
    any_flip = torch.stack(list(flips.values())).any(0)  # [L]
    result["routers"] = len(routers)
    result["flipped_at_worst"] = [
        {"router": name, "reference": their_rows[name][1][worst].tolist(), "ours": our_rows[name][1][worst].tolist(),
         "reference_margin": _margin(their_rows[name][0][worst], shape[1]),
         "ours_margin": _margin(our_rows[name][0][worst], shape[1])}
        for name in routers if bool(flips[name][worst])]
    outputs = slice(first, len(ids) - 1)  # the rows predicting the output tokens
    flipped, same = diffs[outputs][any_flip[outputs]], diffs[outputs][~any_flip[outputs]]
    result["output_positions"] = len(tokens)
    result["output_positions_with_flip"] = int(flipped.numel())
    result["max_diff_with_flip"] = float(flipped.max()) if flipped.numel() else None
    result["max_diff_without_flip"] = float(same.max()) if same.numel() else None
    return result


def router_verdict(check: dict[str, Any]) -> str:
    """One line: does a router flip explain the worst difference?"""
    if "error" in check:
        return f"router check failed: {check['error']}"
    where = (f"worst position (served |dlogprob| {check['served_diff']:.3f}, this check "
             f"{check['check_diff_at_worst']:.3f})")
    flipped = check["flipped_at_worst"]
    head = (f"{len(flipped)}/{check['routers']} routers chose other experts at the {where}, reference margin "
            f"{min(f['reference_margin'] for f in flipped):.3g}" if flipped
            else f"no router chose other experts at the {where}")
    def largest(key: str) -> str:
        return "-" if check[key] is None else f"{check[key]:.3f}"

    return (f"{head}; over the sequence's {check['output_positions']} output positions, "
            f"{check['output_positions_with_flip']} with a flip (max |dlogprob| {largest('max_diff_with_flip')}), "
            f"the rest max {largest('max_diff_without_flip')} ({', '.join(check['selection_from'])})")
