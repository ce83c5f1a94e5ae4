"""The model's own forward, called as `generate` calls it: prefill one sequence, decode a batch.

The keyword a model takes its cache under differs between transformers releases and remote code
(`cache` from 5.2x, `past_key_values` before and in most remote code, `cache_params` for older
Mamba classes); it is read from the forward's signature once. The cache is whatever the model
builds for itself on the first call, and is read back from the output under the same names.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

_CACHE_NAMES = ("cache", "past_key_values", "cache_params")


@dataclass
class Prefilled:
    """One sequence after its prompt ran: its cache and the logits it needs."""

    cache: Any
    logits: torch.Tensor  # [P, V] float32: every position's logits, or the last position's only (P = 1)


class ModelForward:
    """Calls one causal LM's forward with its own cache, on the model's device."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device
        params = inspect.signature(model.forward).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        names = [n for n in _CACHE_NAMES if n in params]
        if not names and not takes_kwargs:
            raise ValueError(f"{type(model).__name__}.forward takes no cache")
        self.cache_kwarg = names[0] if names else "past_key_values"
        self.takes_position_ids = "position_ids" in params
        self.takes_cache_position = "cache_position" in params
        self.logits_kwarg = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)
        # A cache with nothing that grows with the sequence (Mamba's) has no padding to hide, and
        # `generate` decodes such models without a mask: some apply it to their inputs as they are.
        self.decode_with_mask = True

    def _call(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
              past_length: int, cache: Any, all_logits: bool) -> tuple[torch.Tensor, Any]:
        """input_ids, attention_mask (covering the cache too), position_ids: [B, *]. Returns the logits
        [B, Q, V] of the positions kept and the cache the model returns."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": True}
        if past_length == 0 or self.decode_with_mask:
            kwargs["attention_mask"] = attention_mask
        if cache is not None:
            kwargs[self.cache_kwarg] = cache
        if self.takes_position_ids:
            kwargs["position_ids"] = position_ids
        if self.takes_cache_position:
            kwargs["cache_position"] = torch.arange(past_length, past_length + input_ids.shape[1], device=self.device)
        if self.logits_kwarg is not None and not all_logits:
            kwargs[self.logits_kwarg] = 1
        output = self.model(**kwargs)
        returned = _returned_cache(output)
        if returned is None:
            raise RuntimeError(f"{type(self.model).__name__} returned no cache")
        logits = output.logits if hasattr(output, "logits") else output[0]
        return logits, returned

    def prefill(self, prompt_ids: list[int], all_logits: bool) -> Prefilled:
        """Run a prompt from an empty cache (the model builds its own, as in `generate`)."""
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        mask = torch.ones_like(ids)
        positions = torch.arange(len(prompt_ids), device=self.device).unsqueeze(0)
        logits, cache = self._call(ids, mask, positions, 0, None, all_logits)
        logits = logits[0].float()  # [P, V]
        return Prefilled(cache, logits if all_logits else logits[-1:])

    def prefill_batch(self, prompts: list[list[int]]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Run several prompts together, left-padded as `generate` batches them. Returns the cache,
        the padding mask [B, T] and each prompt's next-token logits [B, V] float32."""
        length = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (length - len(p)) + p for p in prompts], dtype=torch.long, device=self.device)
        mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long,
                            device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits, cache = self._call(ids, mask, positions, 0, None, False)
        return cache, mask, logits[:, -1].float()

    def decode(self, cache: Any, token_ids: list[int], attention_mask: torch.Tensor,
               positions: list[int]) -> tuple[torch.Tensor, Any]:
        """One token per row. attention_mask: [B, T + 1] (0 over left padding), positions: each
        row's own position of its token. Returns logits [B, V] float32 and the cache."""
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device).unsqueeze(1)
        position_ids = torch.tensor(positions, dtype=torch.long, device=self.device).unsqueeze(1)
        logits, cache = self._call(ids, attention_mask, position_ids, attention_mask.shape[1] - 1, cache, False)
        return logits[:, -1].float(), cache


def _returned_cache(output: Any) -> Any:
    for name in _CACHE_NAMES:
        value = getattr(output, name, None) if not isinstance(output, dict) else None
        if value is None and isinstance(output, dict):
            value = dict.get(output, name)
        if value is not None:
            return value
    return None
