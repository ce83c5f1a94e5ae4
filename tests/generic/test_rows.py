"""rows.py on transformers' own cache layers: what grows is learned, rows stack left-padded,
leave, and padding nobody needs is trimmed (sliding windows and position counters included)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, MistralConfig

from llmserve.generic.rows import CannotStack, learn_layout, select, slots, stack, trim

WINDOW = 4


def _cache(length: int, seed: int) -> DynamicCache:
    """A one-row cache of a full-attention layer and a sliding-window layer after `length` tokens."""
    config = MistralConfig(num_hidden_layers=2, sliding_window=WINDOW, layer_types=["full_attention",
                                                                                    "sliding_attention"])
    cache = DynamicCache(config=config)
    generator = torch.Generator().manual_seed(seed)
    for layer in range(2):
        k = torch.randn(1, 2, length, 3, generator=generator)
        cache.update(k, k + 1, layer)
    return cache


def test_layout_names_what_grows_and_what_counts() -> None:
    layout = learn_layout(_cache(2, 0), _cache(7, 1), 2, 7)
    assert layout.seq_dims == {".layers[0].keys": 2, ".layers[0].values": 2, ".layers[1].keys": 2,
                               ".layers[1].values": 2}
    assert layout.counters == {".layers[1].cumulative_length"}


def test_rows_stack_left_padded_then_leave_and_padding_is_trimmed() -> None:
    layout = learn_layout(_cache(2, 0), _cache(7, 1), 2, 7)
    short, long = _cache(2, 2), _cache(6, 3)
    short_full, short_window = short.layers[0].keys.clone(), short.layers[1].keys.clone()
    long_full = long.layers[0].keys.clone()
    merged = stack([short, long], [1, 1], [2, 6], layout)
    full, window = merged.layers[0].keys, merged.layers[1].keys
    assert full.shape == (2, 2, 6, 3) and window.shape == (2, 2, WINDOW - 1, 3)
    assert torch.equal(full[0, :, 4:], short_full[0]) and not full[0, :, :4].any()  # left padding is zeros
    assert torch.equal(full[1], long_full[0])
    assert torch.equal(window[0, :, 1:], short_window[0]) and not window[0, :, :1].any()
    assert merged.layers[1].cumulative_length == 6
    select(merged, 2, [0])  # the long row leaves: 4 leading positions are padding in every row
    trim(merged, 6, 4, layout)
    assert torch.equal(merged.layers[0].keys, short_full) and merged.layers[1].cumulative_length == 2
    assert torch.equal(merged.layers[1].keys, short_window)


def test_caches_of_different_structure_do_not_stack() -> None:
    layout = learn_layout(_cache(2, 0), _cache(7, 1), 2, 7)
    one_layer = DynamicCache()
    one_layer.update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), 0)
    with pytest.raises(CannotStack):
        stack([_cache(3, 0), one_layer], [1, 1], [3, 3], layout)


def test_slots_reach_linear_attention_states() -> None:
    from transformers import MambaConfig

    cache = DynamicCache(config=MambaConfig(num_hidden_layers=1))
    cache.update_conv_state(torch.ones(1, 8, 4), 0)
    cache.update_recurrent_state(torch.ones(1, 8, 16), 0)
    shapes = {p: tuple(s.value.shape) for p, s in slots(cache).items() if isinstance(s.value, torch.Tensor) and s.value.dim()}
    assert shapes == {".layers[0].conv_states[0]": (1, 8, 4), ".layers[0].recurrent_states[0]": (1, 8, 16)}


def _counted(value: int) -> object:
    """A stand-in state object (as transformers' layers are) holding a 0-d tensor position counter."""
    from transformers.cache_utils import DynamicLayer

    layer = DynamicLayer()
    layer.cumulative_length = torch.tensor(value)
    return layer


def test_a_tensor_counter_is_learned_set_to_the_padded_length_and_trimmed() -> None:
    layout = learn_layout(_counted(2), _counted(7), 2, 7)
    assert layout.counters == {".cumulative_length"}
    merged = stack([_counted(2), _counted(5)], [1, 1], [2, 5], layout)
    assert isinstance(merged.cumulative_length, torch.Tensor) and int(merged.cumulative_length) == 5
    trim(merged, 5, 3, layout)
    assert int(merged.cumulative_length) == 2
