"""A group of sequences decoded together through one cache, left-padded as in `generate`.

A `RowBatch` holds the model's cache for its rows, the attention mask over the padded positions
(0 where a row has no token) and each row's own length. New sequences are prefilled alone and
joined at a step boundary (`join`); finished or aborted ones leave at once (`remove`), which
frees their part of the cache and the padding nobody needs any more.
"""

from __future__ import annotations

from typing import Any

import torch

from llmserve.generic.rows import CacheLayout, select, stack, trim


class RowBatch:
    """The cache, padding mask and per-row lengths of sequences decoded together."""

    def __init__(self, seq_id: int, cache: Any, length: int, device: torch.device) -> None:
        self.seq_ids = [seq_id]
        self.cache = cache
        self.lengths = [length]  # each row's own number of positions in the cache
        self.mask = torch.ones(1, length, dtype=torch.long, device=device)  # [B, T]

    @classmethod
    def of(cls, seq_ids: list[int], cache: Any, mask: torch.Tensor, lengths: list[int]) -> RowBatch:
        """Rows prefilled together: their cache, padding mask [B, T] and own lengths."""
        batch = cls.__new__(cls)
        batch.seq_ids, batch.cache, batch.mask, batch.lengths = list(seq_ids), cache, mask, list(lengths)
        return batch

    @property
    def num_rows(self) -> int:
        return len(self.seq_ids)

    @property
    def padded_length(self) -> int:
        return int(self.mask.shape[1])

    def join(self, others: list[RowBatch], layout: CacheLayout) -> None:
        """Take the rows of `others` (after this batch's), their caches stacked into this one's."""
        groups = [self, *others]
        length = max(g.padded_length for g in groups)
        self.cache = stack([g.cache for g in groups], [g.num_rows for g in groups],
                           [g.padded_length for g in groups], layout)
        self.mask = torch.cat([_pad_mask(g.mask, length) for g in groups], dim=0)
        for other in others:
            self.seq_ids += other.seq_ids
            self.lengths += other.lengths

    def decode_inputs(self) -> tuple[torch.Tensor, list[int]]:
        """The attention mask [B, T + 1] of a one-token step and each row's position of that token."""
        ones = self.mask.new_ones(self.num_rows, 1)
        return torch.cat([self.mask, ones], dim=1), list(self.lengths)

    def advance(self, cache: Any, mask: torch.Tensor) -> None:
        """Record a decoded step: the cache it returned and its mask [B, T + 1]."""
        self.cache = cache
        self.mask = mask
        self.lengths = [n + 1 for n in self.lengths]

    def remove(self, seq_ids: set[int], layout: CacheLayout) -> None:
        """Drop rows now; columns that became padding in every row are cut off the cache."""
        keep = [row for row, seq_id in enumerate(self.seq_ids) if seq_id not in seq_ids]
        num_rows = self.num_rows
        if len(keep) == num_rows:
            return
        self.seq_ids = [self.seq_ids[row] for row in keep]
        self.lengths = [self.lengths[row] for row in keep]
        if not keep:
            self.cache = None
            self.mask = self.mask[:0]
            return
        select(self.cache, num_rows, keep)
        self.mask = self.mask[keep]
        num_leading = self.padded_length - max(self.lengths)
        if num_leading > 0:
            trim(self.cache, self.padded_length, num_leading, layout)
            self.mask = self.mask[:, num_leading:]


def _pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    """mask [B, T] left-padded with zeros to [B, length]."""
    if mask.shape[1] == length:
        return mask
    return torch.cat([mask.new_zeros(mask.shape[0], length - mask.shape[1]), mask], dim=1)
