"""Random weights that make a tiny model's features matter: transformers' own seeded init, then
a few tensors redrawn where that init would hide a difference.

- A wider input embedding (std 0.1), so greedy outputs follow the prompt instead of falling into a
  few attractor tokens (see `llmserve.tiny.TinyPreset.embedding_std`); untied from the LM head (the
  builder's default), as a dominant tied embedding makes the model repeat its last input token.
- A wider LM head (std 0.3), so next-token distributions are peaked as a trained model's are:
  near-uniform ones hide differences in the logprobs and leave greedy argmaxes to near-ties.
- Random biases and q/k norm weights (they start at zero and one, where a bias or a norm that the
  serving path forgot would change nothing).
- Sharper query/key projections where a family soft-caps its attention scores: with the default
  0.02 init the scores stay far below any cap and a forgotten `tanh` would pass unnoticed.
- Large learned sinks, which take a real share of every row's attention mass.
State-space mixers keep their own init: their biases parametrise time steps.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from llmserve.tiny.families.specs import FamilySpec

LM_HEAD_STD = 0.3  # logits of std ~2.4 over a 64-wide normed state: peaked, not near-uniform
BIAS_STD = 0.02
NORM_RANGE = (0.5, 1.5)
_SSM_MODULES = ("mixer.", "mamba.")  # Mamba's and the hybrids' state-space blocks


@torch.no_grad()
def make_features_matter_(model: PreTrainedModel, spec: FamilySpec) -> None:
    """Redraw, in place and from the global torch generator, the tensors listed in the docstring."""
    embedding = model.get_input_embeddings().weight
    assert isinstance(embedding, torch.Tensor)
    embedding.normal_(0, spec.embedding_std)
    lm_head = model.get_output_embeddings()
    if lm_head is not None and lm_head.weight is not embedding:
        lm_head.weight.normal_(0, LM_HEAD_STD)
    for name, param in model.named_parameters():
        if any(module in name for module in _SSM_MODULES):
            continue
        if name.endswith("bias") and "norm" not in name:
            param.normal_(0, BIAS_STD)
        elif "q_norm" in name or "k_norm" in name:
            param.uniform_(*NORM_RANGE)
        elif spec.qk_std is not None and name.endswith(("q_proj.weight", "k_proj.weight")):
            param.normal_(0, spec.qk_std)
        elif spec.sink_range is not None and name.endswith("sinks"):
            param.uniform_(*spec.sink_range)
