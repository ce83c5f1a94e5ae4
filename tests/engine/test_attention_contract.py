"""inspect_attention: what each stock class's layers hand the attention interface, and what the fast
path is told it cannot serve, found by running tiny random-weight models (no list of names)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import transformers as tf

from llmserve.engine.attention_contract import LayerAttention, inspect_attention
from llmserve.engine.kv_cache import LayerKVSpec

SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 128, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def _model(model_cls: Any, **config: Any) -> Any:
    torch.manual_seed(0)
    return model_cls(model_cls.config_class(**{**SHAPE, **config})).eval()


def test_plain_llama_is_served_and_its_implementation_restored() -> None:
    model = _model(tf.LlamaForCausalLM)
    before = model.config._attn_implementation
    contract = inspect_attention(model)
    assert contract.is_supported and contract.num_layers == 2
    assert contract.layers == tuple(LayerAttention(i, 4, 2, 16, 16, scaling=0.25) for i in range(2))
    assert contract.kv_specs() == [LayerKVSpec(2, 16, 16)] * 2
    assert model.config._attn_implementation == before
    assert not [name for name in tf.AttentionInterface._global_mapping if name.startswith("llmserve_inspect")]


def test_per_layer_windows_softcaps_and_sinks() -> None:
    gemma2 = inspect_attention(_model(tf.Gemma2ForCausalLM, head_dim=16, sliding_window=8,
                                      attn_logit_softcapping=20.0, query_pre_attn_scalar=16))
    assert gemma2.is_supported
    assert [(layer.sliding_window, layer.softcap, layer.scaling) for layer in gemma2.layers] == \
        [(8, 20.0, 0.25), (0, 20.0, 0.25)]  # windowed and global layers in turn
    gpt_oss = inspect_attention(_model(tf.GptOssForCausalLM, head_dim=16, sliding_window=8, num_local_experts=4,
                                       num_experts_per_tok=2))
    assert gpt_oss.is_supported
    assert [(layer.sliding_window, layer.has_sinks) for layer in gpt_oss.layers] == [(8, True), (0, True)]
    mistral = inspect_attention(_model(tf.MistralForCausalLM, sliding_window=8))
    assert mistral.is_supported and [layer.sliding_window for layer in mistral.layers] == [8, 8]


def test_mla_stores_expanded_keys_and_values_of_their_own_head_dims() -> None:
    model = _model(tf.DeepseekV3ForCausalLM, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24,
                   qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12, n_routed_experts=4, num_experts_per_tok=2,
                   first_k_dense_replace=1, moe_intermediate_size=32, n_group=1, topk_group=1)
    contract = inspect_attention(model)
    assert contract.is_supported
    assert contract.kv_specs() == [LayerKVSpec(4, 24, 12)] * 2  # keys: nope + rope features; values: v_head_dim


@pytest.mark.parametrize(("model_cls", "config", "reasons"), [
    (tf.MambaForCausalLM, {"state_size": 8},
     ["layer 0 keeps a", "layer 1 keeps a", "no layer calls transformers' attention interface"]),
    (tf.GraniteMoeHybridForCausalLM, {"layer_types": ["mamba", "attention"], "mamba_d_head": 16, "mamba_n_heads": 8},
     ["layer 0 keeps a", "layer 0 never calls"]),
    (tf.BloomForCausalLM, {"n_layer": 2, "n_head": 4}, ["no layer calls"]),  # ALiBi in its own code
    (tf.Llama4ForCausalLM, {"attention_chunk_size": 4, "head_dim": 16, "num_local_experts": 2,
                            "intermediate_size_mlp": 128, "no_rope_layers": [1, 0]},
     ["layer 0's attention mask is not plain causal"]),  # chunked attention, seen in the mask it gets
], ids=["mamba", "hybrid", "bloom", "chunked"])
def test_what_the_fast_path_cannot_serve_is_named(model_cls: Any, config: dict[str, Any], reasons: list[str]) -> None:
    contract = inspect_attention(_model(model_cls, **config))
    assert len(contract.unsupported) == len(reasons)
    for line, start in zip(contract.unsupported, reasons, strict=True):
        assert line.startswith(start), contract.unsupported


def test_unimplemented_arguments_and_bidirectional_layers_are_named() -> None:
    model = _model(tf.LlamaForCausalLM)
    attention = model.model.layers[1].self_attn
    attention.forward = functools.partial(attention.forward, position_bias=torch.zeros(1))
    assert inspect_attention(model).unsupported == [
        "layer 1 passes `position_bias` to the attention function, which the paged kernels do not implement"]
    model = _model(tf.LlamaForCausalLM)
    model.model.layers[0].self_attn.is_causal = False
    assert inspect_attention(model).unsupported == ["layer 0 is not causal"]


def test_a_failing_forward_is_a_reason_not_an_error() -> None:
    model = _model(tf.LlamaForCausalLM)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no")

    model.model.layers[0].mlp.forward = broken
    contract = inspect_attention(model)
    assert contract.unsupported == ["its forward fails under a recording attention function (RuntimeError: no)"]
