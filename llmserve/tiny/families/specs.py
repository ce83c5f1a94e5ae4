"""The tiny shape of each family: a stock transformers class and the config that makes every
feature of its attention matter on a model 64 wide and 2-4 layers deep.

Sliding windows are 16-32 tokens (so a prompt of ~100 tokens spans several), laid out per layer as
the real checkpoints have them (Gemma 2 and gpt-oss alternate windowed and global layers, Gemma 3
has five windowed layers per global one, Mistral and Starcoder2 window every layer); soft-caps sit
below the attention scores the sharpened q/k projections give (see `weights.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from transformers import (
    BloomForCausalLM,
    CohereForCausalLM,
    DeepseekV3ForCausalLM,
    FalconForCausalLM,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    GPT2LMHeadModel,
    GPTNeoXForCausalLM,
    GptOssForCausalLM,
    GraniteForCausalLM,
    GraniteMoeHybridForCausalLM,
    LlamaForCausalLM,
    MambaForCausalLM,
    MistralForCausalLM,
    MixtralForCausalLM,
    Olmo2ForCausalLM,
    OPTForCausalLM,
    Phi3ForCausalLM,
    PreTrainedModel,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
    Qwen3MoeForCausalLM,
    SmolLM3ForCausalLM,
    Starcoder2ForCausalLM,
)


@dataclass(frozen=True)
class FamilySpec:
    """How to build one family's tiny model."""

    model_cls: type[PreTrainedModel]
    """The stock transformers class (its `config_class` builds the config)."""
    config: dict[str, Any]
    """Config keyword arguments: the tiny shape and the family's attention features."""
    embedding_std: float = 0.1
    """Init std of the input embedding; below 0.1 where the model scales it up (Gemma: by sqrt(64))."""
    qk_std: float | None = None
    """Init std of the query/key projections where attention scores must be large (soft-caps)."""
    sink_range: tuple[float, float] | None = None
    """Learned attention sinks drawn uniformly from this range (large: they take real mass)."""


# Llama-shaped defaults; families whose configs name things differently spell theirs out.
_SHAPE: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                          "max_position_embeddings": 512}
_MOE = {"num_local_experts": 4, "num_experts_per_tok": 2}
WINDOW = 16  # the sliding window of most windowed families; test prompts are several of these long


def _alternating(num_layers: int) -> list[str]:
    """Windowed and global layers in turn, windowed first (Gemma 2, gpt-oss)."""
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]


_NO_HEAD_DIM = {k: v for k, v in _SHAPE.items() if k != "head_dim"}  # configs that derive it
_YARN = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
         "truncate": False, "original_max_position_embeddings": 128}

FAMILIES: MappingProxyType[str, FamilySpec] = MappingProxyType({
    "llama": FamilySpec(LlamaForCausalLM, dict(_SHAPE)),
    "mistral": FamilySpec(MistralForCausalLM, {**_SHAPE, "sliding_window": WINDOW}),  # every layer windowed
    "qwen2": FamilySpec(Qwen2ForCausalLM, dict(_NO_HEAD_DIM)),  # q/k/v biases
    "qwen3": FamilySpec(Qwen3ForCausalLM, dict(_SHAPE)),  # q/k norms
    "qwen3_moe": FamilySpec(Qwen3MoeForCausalLM, {**_SHAPE, "num_experts": 4, "num_experts_per_tok": 2,
                                                  "moe_intermediate_size": 32, "norm_topk_prob": True}),
    # Soft-capped scores (sharpened q/k make the cap bite), windowed and global layers in turn.
    "gemma2": FamilySpec(Gemma2ForCausalLM, {**_SHAPE, "num_hidden_layers": 4, "query_pre_attn_scalar": 16,
                                             "sliding_window": WINDOW, "layer_types": _alternating(4),
                                             "attn_logit_softcapping": 2.0, "final_logit_softcapping": 5.0},
                         embedding_std=0.0125, qk_std=0.3),
    # Three windowed layers (their own rope base) per global one; q/k norms.
    "gemma3": FamilySpec(Gemma3ForCausalLM, {**_SHAPE, "num_hidden_layers": 4, "query_pre_attn_scalar": 16,
                                             "sliding_window": WINDOW,
                                             "layer_types": ["sliding_attention"] * 3 + ["full_attention"]},
                         embedding_std=0.0125),
    # Learned sinks, windowed and global layers in turn, YaRN scaling, experts.
    "gpt_oss": FamilySpec(GptOssForCausalLM, {**_SHAPE, **_MOE, "sliding_window": WINDOW,
                                              "layer_types": _alternating(2), "rope_parameters": _YARN},
                          sink_range=(1.0, 5.0)),
    "phi3": FamilySpec(Phi3ForCausalLM, dict(_NO_HEAD_DIM)),  # fused qkv and gate/up projections
    "gpt2": FamilySpec(GPT2LMHeadModel, {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512}),
    "gpt_neox": FamilySpec(GPTNeoXForCausalLM, {"hidden_size": 64, "intermediate_size": 128,  # partial rotary
                                                "num_hidden_layers": 2, "num_attention_heads": 4,
                                                "max_position_embeddings": 512}),
    "opt": FamilySpec(OPTForCausalLM, {"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2,
                                       "num_attention_heads": 4, "word_embed_proj_dim": 64,
                                       "max_position_embeddings": 512}),
    "bloom": FamilySpec(BloomForCausalLM, {"hidden_size": 64, "n_layer": 2, "n_head": 4}),  # ALiBi
    "falcon": FamilySpec(FalconForCausalLM, {"hidden_size": 64, "num_hidden_layers": 2,  # multi-query
                                             "num_attention_heads": 4, "max_position_embeddings": 512}),
    "olmo2": FamilySpec(Olmo2ForCausalLM, dict(_NO_HEAD_DIM)),  # q/k norms over all heads
    "granite": FamilySpec(GraniteForCausalLM, {**_SHAPE, "embedding_multiplier": 12.0, "logits_scaling": 8.0,
                                               "residual_multiplier": 0.22, "attention_multiplier": 0.5}),
    "cohere": FamilySpec(CohereForCausalLM, dict(_NO_HEAD_DIM)),  # parallel block, logit scale
    "starcoder2": FamilySpec(Starcoder2ForCausalLM, {**_NO_HEAD_DIM, "sliding_window": 2 * WINDOW}),
    "smollm3": FamilySpec(SmolLM3ForCausalLM, {**_SHAPE, "num_hidden_layers": 4}),  # every 4th layer without rope
    "mixtral": FamilySpec(MixtralForCausalLM, {**_SHAPE, **_MOE}),
    # Multi-head latent attention; one dense layer, then experts with grouped routing.
    "deepseek_v3": FamilySpec(DeepseekV3ForCausalLM, {
        "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 32,
        "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16, "n_routed_experts": 4,
        "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1,
        "max_position_embeddings": 512}),
    "mamba": FamilySpec(MambaForCausalLM, {"hidden_size": 64, "state_size": 16, "num_hidden_layers": 2}),
    # Granite-4-H's shape: Mamba-2 layers around one attention layer without positions, experts.
    # (Of the hybrids transformers ships, it runs on the CPU with torch fallbacks for every kernel.)
    "granitemoehybrid": FamilySpec(GraniteMoeHybridForCausalLM, {
        **_MOE, "hidden_size": 64, "intermediate_size": 64, "shared_intermediate_size": 128,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "layer_types": ["mamba", "attention", "mamba", "mamba"],
        "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_state": 16, "mamba_n_groups": 1,
        "mamba_chunk_size": 32, "position_embedding_type": "nope"}),
})
