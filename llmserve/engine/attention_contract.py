"""What a model's attention layers hand transformers' attention interface, found by running it.

`inspect_attention(model)` registers a recording attention function (and a mask function, so the
model builds the masks its layers would get) under a name of its own, runs the model once on a few
tokens, and puts the model's attention implementation back. Per layer it records that the layer
called the interface (with its `layer_idx`), the q/k/v shapes and every keyword argument. From that:

- the per-layer cache shape (`LayerKVSpec`: KV heads, key and value head dims, window), which is
  what the layer really stores: MLA (DeepSeek-V2/V3) hands over expanded keys of
  `qk_nope + qk_rope` features and values of `v_head_dim`, not its latent;
- the per-layer features the kernels implement (`sliding_window`, `softcap`, `s_aux` sinks,
  `alibi_slopes`, `scaling`);
- `unsupported`: why the paged fast path cannot serve the model, one line each: layers that never
  call the interface (state-space mixers, attention in the model's own code), keyword arguments the
  kernels do not implement, masks that are not causal within the layer's window (chunked or
  bidirectional attention), and cache state of transformers' own cache for the model that is not
  attention keys and values (a hybrid's recurrent layers).

Nothing here reads a list of model names: a new class that hands over the same contract is served,
one that does something else is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicCache, LinearAttentionCacheLayerMixin
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from llmserve.engine.kv_cache import LayerKVSpec

_RECORDER = "llmserve_inspect"
_SHORT_INPUT = 16
_MAX_MASK_INPUT = 256  # longest input run to check window masks (a window past half of it is checked causal only)
# Keyword arguments the kernels implement (see hf_attention.paged_attention_forward).
IMPLEMENTED_KWARGS = frozenset({"scaling", "dropout", "sliding_window", "softcap", "s_aux", "alibi_slopes", "is_causal"})
# Arguments transformers forwards from the model call that do not change what attention computes.
_PASS_THROUGH = frozenset({
    "position_ids", "use_cache", "cache_position", "output_attentions", "output_hidden_states",
    "output_router_logits", "return_dict", "past_key_values", "cache", "layer_idx", "position_embeddings",
    "llmserve_attention",
})


@dataclass(frozen=True)
class LayerAttention:
    """One layer's call of the attention function, as recorded."""

    layer_idx: int
    num_heads: int
    num_kv_heads: int
    head_dim: int  # queries and keys
    head_dim_v: int  # values
    scaling: float | None = None  # None: head_dim ** -0.5
    sliding_window: int = 0  # 0: none; else a query sees its last W positions
    softcap: float = 0.0
    has_sinks: bool = False
    has_alibi: bool = False

    @property
    def kv_spec(self) -> LayerKVSpec:
        """What this layer stores per token in the paged cache."""
        return LayerKVSpec(self.num_kv_heads, self.head_dim, self.head_dim_v, self.sliding_window)


@dataclass(frozen=True)
class AttentionContract:
    """A model's attention as the fast path sees it: per layer, and what it cannot serve."""

    num_layers: int  # the decoder's layers (the config's num_hidden_layers)
    layers: tuple[LayerAttention, ...]  # the layers that called the interface, by layer_idx
    unsupported: list[str] = field(default_factory=list)  # empty: the fast path can serve it

    @property
    def is_supported(self) -> bool:
        return not self.unsupported

    def kv_specs(self) -> list[LayerKVSpec]:
        """Each layer's cache shape, layer 0 first (only meaningful when `is_supported`)."""
        return [layer.kv_spec for layer in self.layers]


@dataclass
class _Call:
    module: torch.nn.Module
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # q, k, v: [B, H, L, D]
    mask: torch.Tensor | None
    kwargs: dict[str, Any]


def inspect_attention(model: torch.nn.Module, num_tokens: int = _SHORT_INPUT) -> AttentionContract:
    """Run `model` on `num_tokens` tokens (and, for windows up to half of 256 positions, on enough
    tokens to see the window edge) with a recording attention function; its attention
    implementation is restored afterwards."""
    config: Any = model.config  # type: ignore[union-attr]
    num_layers = int(getattr(config.get_text_config(), "num_hidden_layers", 0) or 0)
    try:
        calls = _record(model, num_tokens)
    except Exception as exc:  # the model's own code, with any error: it is not served by the fast path
        reason = str(exc).strip().split("\n")[0][:200]
        return AttentionContract(num_layers, (), [f"its forward fails under a recording attention function "
                                                  f"({type(exc).__name__}: {reason})"])
    unsupported = _cache_state_reasons(config)
    layers, reasons = _read_calls(calls, num_layers, num_tokens)
    unsupported += reasons
    windows = [layer.sliding_window for layer in layers if layer.sliding_window]
    longer = 2 * max(windows, default=0) + 2
    if not unsupported and num_tokens < longer <= _MAX_MASK_INPUT:
        unsupported += _mask_reasons(_record(model, longer), layers, longer)
    elif not unsupported:
        unsupported += _mask_reasons(calls, layers, num_tokens)
    return AttentionContract(num_layers, tuple(layers), unsupported)


def _record(model: torch.nn.Module, num_tokens: int) -> list[_Call]:
    """Every call of the attention function in one forward of `num_tokens` tokens."""
    calls: list[_Call] = []

    def record(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        mask = attention_mask.detach().cpu() if isinstance(attention_mask, torch.Tensor) else None
        calls.append(_Call(module, (tuple(query.shape), tuple(key.shape), tuple(value.shape)), mask, kwargs))
        # Zeros of the output's shape: the rest of the forward only has to run, not be right.
        return query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1]), None

    embedding = model.get_input_embeddings()  # type: ignore[operator]
    vocab_size = int(embedding.weight.shape[0])
    input_ids = (torch.arange(num_tokens) % max(vocab_size - 1, 1) + 1).unsqueeze(0).to(embedding.weight.device)
    with _implementation(model, record), torch.no_grad():
        model(input_ids=input_ids, position_ids=torch.arange(num_tokens, device=input_ids.device)[None],
              use_cache=False)
    return calls


@contextmanager
def _implementation(model: torch.nn.Module, function: Callable[..., Any]) -> Iterator[None]:
    """`function` as the model's attention implementation, with full boolean masks, while inside.

    Registered under a name of this call's own (workers load in threads at once: one shared name
    would let one worker's recorder receive another's calls) and unregistered afterwards.
    """
    config: Any = model.config  # type: ignore[union-attr]
    previous = config._attn_implementation
    name = f"{_RECORDER}_{id(function):x}"
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, _full_mask)
    try:
        model.set_attn_implementation(name)  # type: ignore[operator]
        yield
    finally:
        model.set_attn_implementation(previous)  # type: ignore[operator]
        for interface in (AttentionInterface, AttentionMaskInterface):
            interface._global_mapping.pop(name, None)  # register() has no inverse


def _full_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """transformers' SDPA mask, never skipped for being plainly causal: what each layer is meant to see."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _cache_state_reasons(config: Any) -> list[str]:
    """Layers of transformers' own cache for this model that keep something other than attention k/v."""
    try:
        cache = DynamicCache(config=config)
    except Exception:  # a config the cache cannot read (e.g. a state-space model's): the calls tell
        return []
    reasons = []
    for index, layer in enumerate(cache.layers):
        # Recurrent and convolution states (transformers' linear-attention layers, any layer holding them).
        if isinstance(layer, LinearAttentionCacheLayerMixin) or any(
                hasattr(layer, name) for name in ("conv_states", "recurrent_states", "ssm_states")):
            reasons.append(f"layer {index} keeps a {type(layer).__name__} in transformers' cache (state besides "
                           "attention keys and values)")
    return reasons


def _read_calls(calls: list[_Call], num_layers: int, num_tokens: int) -> tuple[list[LayerAttention], list[str]]:
    """Per-layer attention from the recorded calls, and what in them the kernels cannot do."""
    if not calls:
        return [], ["no layer calls transformers' attention interface (a state-space model, or attention "
                    "written in the model's own code)"]
    reasons: list[str] = []
    by_layer: dict[int, LayerAttention] = {}
    for call in calls:
        layer_idx = getattr(call.module, "layer_idx", None)
        if not isinstance(layer_idx, int):
            reasons.append(f"{type(call.module).__name__} calls the attention interface without a layer_idx")
            continue
        if layer_idx in by_layer:
            reasons.append(f"layer {layer_idx} calls the attention interface more than once per forward")
            continue
        layer, layer_reasons = _read_call(call, layer_idx, num_tokens)
        by_layer[layer_idx] = layer
        reasons += layer_reasons
    missing = sorted(set(range(num_layers)) - set(by_layer))
    if missing:
        which = f"layers {_ranges(missing)} never call" if len(missing) > 1 else f"layer {missing[0]} never calls"
        reasons.append(f"{which} transformers' attention interface (a recurrent mixer or attention in the "
                       "model's own code)")
    extra = sorted(set(by_layer) - set(range(num_layers)))
    if extra:
        reasons.append(f"layer_idx {_ranges(extra)} outside the config's {num_layers} layers")
    layers = [by_layer[i] for i in sorted(by_layer)]
    return layers, reasons


def _read_call(call: _Call, layer_idx: int, num_tokens: int) -> tuple[LayerAttention, list[str]]:
    """One layer's features and the reasons its call is outside the kernels' contract."""
    (q_batch, num_heads, q_len, head_dim), (_, num_kv_heads, k_len, k_dim), (_, v_heads, v_len, head_dim_v) = \
        call.shapes
    kwargs = call.kwargs
    where = f"layer {layer_idx}"
    reasons = []
    if k_dim != head_dim or v_heads != num_kv_heads or num_heads % num_kv_heads:
        reasons.append(f"{where}: query {call.shapes[0]}, key {call.shapes[1]} and value {call.shapes[2]} do not "
                       "form grouped-query attention")
    if not (q_len == k_len == v_len == num_tokens):
        reasons.append(f"{where} attends {q_len} queries to {k_len} keys for {num_tokens} input tokens (a memory "
                       "or another layer's cache)")
    if kwargs.get("is_causal") is False or getattr(call.module, "is_causal", True) is False:
        reasons.append(f"{where} is not causal")
    if kwargs.get("dropout") not in (None, 0, 0.0):
        reasons.append(f"{where} asks for attention dropout ({kwargs['dropout']})")
    for name, value in kwargs.items():
        if name not in IMPLEMENTED_KWARGS and name not in _PASS_THROUGH and value is not None and value is not False:
            reasons.append(f"{where} passes `{name}` to the attention function, which the paged kernels do not "
                           "implement")
    window = kwargs.get("sliding_window")
    if window is not None and (not isinstance(window, int) or window <= 0):
        reasons.append(f"{where}: sliding_window = {window!r} is not a positive int")
        window = None
    softcap = kwargs.get("softcap")
    for name in ("s_aux", "alibi_slopes"):
        value = kwargs.get(name)
        if value is not None and (not isinstance(value, torch.Tensor) or tuple(value.shape) != (num_heads,)):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            reasons.append(f"{where}: `{name}` of shape {shape}, expected one value per query head ({num_heads})")
    scaling = kwargs.get("scaling")
    layer = LayerAttention(
        layer_idx, num_heads, num_kv_heads, head_dim, head_dim_v,
        scaling=float(scaling) if scaling is not None else None, sliding_window=int(window or 0),
        softcap=float(softcap or 0.0), has_sinks=kwargs.get("s_aux") is not None,
        has_alibi=kwargs.get("alibi_slopes") is not None,
    )  # fmt: skip
    del q_batch
    return layer, reasons


def _mask_reasons(calls: list[_Call], layers: list[LayerAttention], num_tokens: int) -> list[str]:
    """Layers whose mask (as transformers builds it for them) is not causal within their own window."""
    by_idx = {layer.layer_idx: layer for layer in layers}
    reasons = []
    positions = torch.arange(num_tokens)
    delta = positions[:, None] - positions[None, :]  # [L, L] query position minus key position
    for call in calls:
        layer = by_idx.get(getattr(call.module, "layer_idx", -1))
        if layer is None or call.mask is None:
            continue  # no mask built: the layer relies on being causal, checked with its kwargs
        mask = call.mask
        visible = mask if mask.dtype == torch.bool else mask == 0
        if visible.dim() != 4 or visible.shape[-2:] != (num_tokens, num_tokens):
            reasons.append(f"layer {layer.layer_idx} gets an attention mask of shape {tuple(mask.shape)}")
            continue
        expected = delta >= 0
        if layer.sliding_window:
            expected &= delta < layer.sliding_window
        if not torch.equal(visible[0, 0], expected) or not bool((visible == visible[:1, :1]).all()):
            what = f"its sliding window of {layer.sliding_window}" if layer.sliding_window else "plain causal"
            reasons.append(f"layer {layer.layer_idx}'s attention mask is not {what} (chunked, bidirectional "
                           "or another pattern the paged kernels do not implement)")
    return reasons


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts: list[str] = []
    start = prev = indices[0]
    for index in indices[1:] + [None]:  # type: ignore[list-item]
        if index is not None and index == prev + 1:
            prev = index
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if index is not None:
            start = prev = index
    return ", ".join(parts)
