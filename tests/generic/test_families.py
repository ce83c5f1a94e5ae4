"""Every family of the model matrix (llmserve/tiny/families) on the generic path: batched decoding
chosen by the probe, greedy token-exact against the model's own `generate`, logprobs within 1e-4
of its forward, with requests joining a running batch and prompts several windows long."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmserve.engine.request import SamplingParams
from llmserve.generic.batching import plan_batching
from llmserve.generic.engine import GenericEngine
from llmserve.generic.forward import ModelForward
from llmserve.tiny.families import FAMILIES, build_family_model
from tests.generic.test_engine import run, tokens

TEXTS = ["def f(x):\n    return x * 2\n", "alpha beta", "The rain in Spain " * 12, "z", "import numpy as np"]
MAX_TOKENS = [12, 9, 10, 14, 6]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_on_the_generic_path(family: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = build_family_model(family, tiny_model_dir, tmp_path / family, seed=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab_size = int(model.get_output_embeddings().weight.shape[0])
    forward = ModelForward(model, torch.device("cpu"))
    plan = plan_batching(forward, vocab_size, torch.float32)
    assert plan.layout is not None and plan.batched_prefill, plan.reason
    engine = GenericEngine(forward, tokenizer, frozenset(), vocab_size, 4096, plan.layout,
                           batched_prefill=plan.batched_prefill)
    prompts = [tokenizer.encode(t) for t in TEXTS]
    events = run(engine, [(p, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, logprobs=0))
                          for p, n in zip(prompts, MAX_TOKENS, strict=True)], join_every=2, burst=2)
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            got = tokens(events[i])
            expected = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS[i], do_sample=False,
                                      eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
            assert got == expected, f"{family} request {i}"
            logprobs = torch.log_softmax(model(torch.tensor([prompt + got]), use_cache=False).logits[0].float(), -1)
            served = [lp.logprob for e in events[i] for lp in e.logprobs]
            for step, value in enumerate(served):
                assert abs(value - float(logprobs[len(prompt) - 1 + step, got[step]])) < 1e-4
