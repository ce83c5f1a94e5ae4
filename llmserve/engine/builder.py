"""Assembles a worker's engine: load the model, size the cache, wire scheduler, runner and sampler."""

from __future__ import annotations

import logging

from llmserve.config import WorkerConfig
from llmserve.embedding.engine import EmbeddingEngine, build_embedding_engine
from llmserve.engine import hf_attention
from llmserve.engine.engine import LLMEngine
from llmserve.engine.fused_projections import fuse_projections
from llmserve.engine.kv_cache import BlockPool, KVCache
from llmserve.engine.runner import ModelRunner
from llmserve.engine.scheduler import Scheduler, SchedulerConfig
from llmserve.errors import ConfigError
from llmserve.loading import LoadedModel, kv_cache_spec, load_model, worker_task
from llmserve.templates import check_chat_template, resolve_chat_template

log = logging.getLogger(__name__)


def build_worker_engine(config: WorkerConfig, index: int) -> LLMEngine | EmbeddingEngine:
    """A server worker's engine: text generation, or embeddings for `task = "embed"` workers."""
    if worker_task(config, f"workers[{index}]") == "embed":
        return build_embedding_engine(config, index)
    return build_engine(config, index)


def build_engine(config: WorkerConfig, index: int) -> LLMEngine:
    """Everything one text-generation worker runs, ready to step."""
    path = f"workers[{index}]"
    if worker_task(config, path) == "embed":
        raise ConfigError(f'{path}.model_path = "{config.model_path}": an embedding model, which cannot '
                          "generate text")
    check_chat_template(config.chat_template, f"{path}.chat_template")
    loaded = load_model(config, path)
    loaded.tokenizer.chat_template = resolve_chat_template(config.chat_template, loaded.tokenizer)
    spec = kv_cache_spec(loaded, config)
    hf_attention.install(loaded.model)
    if config.fuse_projections and not loaded.uses_device_map:  # plain Linears on one device only
        fuse_projections(loaded.model)
    kv_cache = KVCache(spec, loaded.layer_devices or loaded.device)
    pool = BlockPool(spec.num_blocks, spec.block_size, config.enable_prefix_caching)
    scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens), pool)
    # Split or bitsandbytes models run eagerly on the torch attention path: Triton kernels
    # launch on the current device, not on each layer's.
    fast_path = not loaded.uses_device_map
    runner = ModelRunner(loaded.model, kv_cache, loaded.device, max_num_seqs=config.max_num_seqs,
                         max_num_batched_tokens=config.max_num_batched_tokens,
                         max_model_len=loaded.max_model_len, use_triton=fast_path,
                         use_cuda_graphs=config.cuda_graphs and fast_path, compile_model=config.compile)
    log.info(
        "%s: %s on %s, %s, %.1fM parameters, %.2f GiB weights, KV cache %d tokens (%d blocks of %d), "
        "context %d",
        path, config.model_path, loaded.placement or loaded.device, _weights_dtype(loaded),
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
        async_scheduling=config.async_scheduling and fast_path and loaded.device.type == "cuda",
    )


def _weights_dtype(loaded: LoadedModel) -> str:
    dtype = str(loaded.dtype).removeprefix("torch.")
    return f"{dtype} ({loaded.quantization} weights, bitsandbytes)" if loaded.quantization else dtype
