"""Assembles the generic path's engine around a model that is already loaded."""

from __future__ import annotations

import logging

from llmserve.config import WorkerConfig
from llmserve.generic.batching import plan_batching
from llmserve.generic.engine import GenericEngine
from llmserve.generic.forward import ModelForward
from llmserve.loading import LoadedModel

log = logging.getLogger(__name__)


def build_generic_engine(loaded: LoadedModel, config: WorkerConfig, path: str) -> GenericEngine:
    """A `GenericEngine` over `loaded`'s own forward and cache; batched decoding when a probe shows
    that stacking the model's cache gives what decoding alone gives."""
    forward = ModelForward(loaded.model, loaded.device)
    plan = plan_batching(forward, loaded.vocab_size, loaded.dtype)
    log.info("%s: generic path, %s: %s", path,
             "batched decoding" if plan.layout is not None else "one sequence per forward", plan.reason)
    return GenericEngine(
        forward=forward,
        tokenizer=loaded.tokenizer,
        stop_token_ids=loaded.stop_token_ids,
        vocab_size=loaded.vocab_size,
        max_model_len=loaded.max_model_len,
        layout=plan.layout,
        batched_prefill=plan.batched_prefill,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        stream_interval=config.stream_interval,
        seed=config.seed,
    )
