"""Assembles a worker's engine: load the model, size the cache, wire scheduler, runner and sampler."""

from __future__ import annotations

import logging

from llmserve.config import WorkerConfig
from llmserve.engine import hf_attention
from llmserve.engine.engine import LLMEngine
from llmserve.engine.kv_cache import BlockPool, KVCache
from llmserve.engine.runner import ModelRunner
from llmserve.engine.scheduler import Scheduler, SchedulerConfig
from llmserve.loading import kv_cache_spec, load_model
from llmserve.templates import resolve_chat_template

log = logging.getLogger(__name__)


def build_engine(config: WorkerConfig, index: int) -> LLMEngine:
    """Everything one worker runs, ready to step."""
    path = f"workers[{index}]"
    loaded = load_model(config, path)
    loaded.tokenizer.chat_template = resolve_chat_template(config.chat_template, loaded.tokenizer)
    spec = kv_cache_spec(loaded, config)
    hf_attention.install(loaded.model)
    kv_cache = KVCache(spec, loaded.device)
    pool = BlockPool(spec.num_blocks, spec.block_size, config.enable_prefix_caching)
    scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens), pool)
    runner = ModelRunner(loaded.model, kv_cache, loaded.device, max_num_seqs=config.max_num_seqs,
                         max_num_batched_tokens=config.max_num_batched_tokens,
                         max_model_len=loaded.max_model_len, use_cuda_graphs=config.cuda_graphs)
    log.info(
        "%s: %s on %s, %s, %.1fM parameters, %.2f GiB weights, KV cache %d tokens (%d blocks of %d), "
        "context %d",
        path, config.model_path, loaded.device, str(loaded.dtype).removeprefix("torch."),
        loaded.num_parameters / 1e6, loaded.weight_bytes / 1024**3, spec.num_tokens, spec.num_blocks,
        spec.block_size, loaded.max_model_len,
    )
    return LLMEngine(
        runner=runner,
        scheduler=scheduler,
        tokenizer=loaded.tokenizer,
        stop_token_ids=loaded.stop_token_ids,
        vocab_size=loaded.vocab_size,
        max_model_len=loaded.max_model_len,
        stream_interval=config.stream_interval,
        seed=config.seed,
    )
