"""The rows of a model's own cache: stacked with left padding, selected, trimmed.

Whatever cache a model builds for itself (transformers' `DynamicCache` with attention, sliding
window, or Mamba/linear-attention layers, or a remote-code model's) is a small tree of objects
holding batch-first tensors. The generic path batches sequences by stacking those tensors along
the batch dimension, as `generate` holds a left-padded batch: sequence-length dimensions are
left-padded to the longest row (the attention mask hides the padding), fixed-size states (conv,
SSM) are stacked as they are. Which dimension of which tensor grows with the sequence, and which
integers count positions, is learned once by running the model (`learn_layout`), not from class
names; a cache this module cannot take apart raises `CannotStack` and its model runs one
sequence per forward instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_MAX_DEPTH = 5


class CannotStack(Exception):
    """A cache whose rows cannot be stacked or selected (its model runs one sequence at a time)."""


@dataclass(frozen=True)
class CacheLayout:
    """What varies with the sequence length inside a model's cache."""

    seq_dims: dict[str, int]  # tensor path -> its dimension that grows with the sequence
    counters: frozenset[str]  # integers (or 0-d integer tensors) that count positions (the padded length once stacked)


@dataclass
class _Slot:
    container: Any  # dict, list or object holding the value
    key: Any  # its key, index or attribute name
    value: Any

    def set(self, value: Any) -> None:
        if isinstance(self.container, (dict, list)):
            self.container[self.key] = value
        else:
            setattr(self.container, self.key, value)


def _is_state_object(obj: Any) -> bool:
    """Objects whose attributes are walked: transformers' (or a remote module's) cache classes."""
    if isinstance(obj, (type, torch.nn.Module)) or not hasattr(obj, "__dict__"):
        return False
    module = type(obj).__module__ or ""
    return module.startswith("transformers") and "configuration" not in module


def slots(cache: Any) -> dict[str, _Slot]:
    """Every tensor, int, bool and None reachable in `cache`, by path."""
    found: dict[str, _Slot] = {}
    _walk(cache, "", 0, found, None, None)
    return found


def _walk(obj: Any, path: str, depth: int, found: dict[str, _Slot], container: Any, key: Any) -> None:
    if obj is None or isinstance(obj, (torch.Tensor, bool, int)):
        if container is not None:
            found[path] = _Slot(container, key, obj)
        return
    if depth >= _MAX_DEPTH:
        return
    if isinstance(obj, tuple):
        if any(isinstance(item, torch.Tensor) for item in obj):
            raise CannotStack(f"immutable tensors at {path or 'the cache'}")
        return
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            _walk(v, f"{path}[{k!r}]", depth + 1, found, obj, k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _walk(v, f"{path}[{i}]", depth + 1, found, obj, i)
    elif _is_state_object(obj):
        for k, v in list(vars(obj).items()):
            _walk(v, f"{path}.{k}", depth + 1, found, obj, k)


def learn_layout(short: Any, long: Any, short_len: int, long_len: int) -> CacheLayout:
    """Compare the caches of two one-row prefills of different lengths: a tensor dimension that
    differs grows with the sequence; an integer that differs counts positions."""
    a, b = slots(short), slots(long)
    if a.keys() != b.keys():
        raise CannotStack("the cache's structure depends on the prompt length")
    seq_dims: dict[str, int] = {}
    counters = set()
    for path, slot in a.items():
        x, y = slot.value, b[path].value
        if _is_counter_pair(x, y):
            if (int(x), int(y)) != (short_len, long_len):
                raise CannotStack(f"{path}: {int(x)} and {int(y)} for {short_len} and {long_len} tokens")
            counters.add(path)
        elif isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.dim() != y.dim() or x.dim() == 0:
                continue  # not a per-row tensor (scalars that do not count positions): stacking leaves it alone
            diff = [d for d in range(1, x.dim()) if x.shape[d] != y.shape[d]]
            if len(diff) > 1 or x.shape[0] != 1:
                raise CannotStack(f"{path}: shapes {tuple(x.shape)} and {tuple(y.shape)}")
            if diff:
                seq_dims[path] = diff[0]
        elif type(x) is not type(y):
            raise CannotStack(f"{path}: {type(x).__name__} and {type(y).__name__}")
    return CacheLayout(seq_dims, frozenset(counters))


def _is_counter_pair(x: Any, y: Any) -> bool:
    """Two values of one slot that count positions: plain integers, or 0-d integer tensors (as
    transformers' linear-attention layers keep theirs, in place for CUDA graphs), that differ."""
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        scalar = x.dim() == 0 and y.dim() == 0 and not x.is_floating_point() and x.dtype != torch.bool
        return scalar and int(x) != int(y)
    return isinstance(x, int) and not isinstance(x, bool) and isinstance(y, int) and x != y


def _counter(old: Any, value: int) -> Any:
    """`value` in the counter's own kind: an int, or a 0-d tensor on the old one's device."""
    return torch.full_like(old, value) if isinstance(old, torch.Tensor) else value


def _is_row_tensor(value: Any, num_rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == num_rows


def stack(caches: list[Any], num_rows: list[int], lengths: list[int], layout: CacheLayout) -> Any:
    """One cache holding the rows of `caches` (each `num_rows[i]` rows, `lengths[i]` padded
    positions) in order, every sequence dimension left-padded to the longest. Reuses `caches[0]`."""
    if len(caches) == 1:
        return caches[0]
    trees = [slots(c) for c in caches]
    if any(t.keys() != trees[0].keys() for t in trees):
        raise CannotStack("caches of different structure")
    length = max(lengths)
    updates: list[tuple[_Slot, Any]] = []  # applied once all are known: a refusal leaves caches[0] as it was
    for path, slot in trees[0].items():
        values = [t[path].value for t in trees]
        if all(_is_row_tensor(v, n) for v, n in zip(values, num_rows, strict=True)):
            dim = layout.seq_dims.get(path)
            if dim is not None:
                width = max(v.shape[dim] for v in values)
                values = [_pad_left(v, dim, width) for v in values]
            if any(v.shape[1:] != values[0].shape[1:] for v in values):
                raise CannotStack(f"{path}: rows of different shapes")
            updates.append((slot, torch.cat(values, dim=0)))
        elif path in layout.counters:
            updates.append((slot, _counter(values[0], length)))
        elif isinstance(values[0], torch.Tensor):
            if any(not isinstance(v, torch.Tensor) or not torch.equal(v, values[0]) for v in values):
                raise CannotStack(f"{path}: tensors that are not per row differ")
        elif any(v != values[0] for v in values):
            raise CannotStack(f"{path}: {values}")
    for slot, value in updates:
        slot.set(value)
    return caches[0]


def _pad_left(t: torch.Tensor, dim: int, width: int) -> torch.Tensor:
    if t.shape[dim] == width:
        return t
    shape = list(t.shape)
    shape[dim] = width - t.shape[dim]
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def select(cache: Any, num_rows: int, keep: list[int]) -> None:
    """Keep the rows `keep` (in that order) of a cache of `num_rows` rows, in place."""
    index: torch.Tensor | None = None
    for slot in slots(cache).values():
        if _is_row_tensor(slot.value, num_rows):
            if index is None or index.device != slot.value.device:
                index = torch.tensor(keep, dtype=torch.long, device=slot.value.device)
            slot.set(slot.value.index_select(0, index))


def trim(cache: Any, length: int, num_leading: int, layout: CacheLayout) -> None:
    """Drop the first `num_leading` of `length` padded positions (padding in every row), in place.

    A sequence tensor shorter than `length` (a sliding window's) holds the last positions only.
    """
    for path, slot in slots(cache).items():
        dim = layout.seq_dims.get(path)
        if dim is not None and isinstance(slot.value, torch.Tensor) and slot.value.dim() > dim:
            size = slot.value.shape[dim]
            drop = max(0, num_leading - (length - size))
            if drop:
                slot.set(slot.value.narrow(dim, drop, size - drop))
        elif path in layout.counters:
            slot.set(slot.value - num_leading)  # an int, or a 0-d tensor (no device sync)
