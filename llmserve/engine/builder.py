"""Assembles a worker's engine: load the model, choose its path, build the engine, probe it.

One straight sequence (resolving, placing and loading are `loading.load_model`'s): load -> the
probe's reference from the model as loaded (before any path changes it) -> choose the path ->
build its engine (the fast path sizes its KV cache here) -> probe -> serve, fall back, or refuse.

`engine_path` decides:
- "auto": the fast path unless the attention contract names something it cannot serve; its
  engine must pass the probe (`llmserve/probe.py`), else the model is loaded afresh (the fast path
  changed it: its attention function, fused projections) for the generic path, which must pass the
  probe too, else the worker is refused with one line naming both causes.
- "fast": the fast path, or a refusal at start-up (attention it cannot serve, a failed probe).
- "generic": the generic path, probed all the same.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from llmserve.config import WorkerConfig
from llmserve.embedding.engine import EmbeddingEngine, build_embedding_engine
from llmserve.engine import hf_attention
from llmserve.engine.attention_contract import inspect_attention
from llmserve.engine.engine import LLMEngine
from llmserve.engine.fp8_linear import make_traceable as make_fp8_traceable
from llmserve.engine.fused_projections import fuse_projections
from llmserve.engine.kv_cache import BlockPool, KVCache
from llmserve.engine.runner import ModelRunner
from llmserve.engine.scheduler import Scheduler, SchedulerConfig
from llmserve.engine.serving_path import EMBEDDING, FAST, GENERIC, ServingPath
from llmserve.errors import ConfigError
from llmserve.loading import LoadedModel, ResolvedWorker, kv_cache_spec, load_model, resolve_worker
from llmserve.probe import Reference, compute_reference, plan_probe, smallest_window
from llmserve.probe_run import ProbeResult, probe_engine
from llmserve.templates import check_chat_template, resolve_chat_template

if TYPE_CHECKING:
    from llmserve.generic.engine import GenericEngine

log = logging.getLogger(__name__)


def build_worker_engine(config: WorkerConfig, index: int) -> LLMEngine | GenericEngine | EmbeddingEngine:
    """A server worker's engine: text generation, or embeddings for `task = "embed"` workers."""
    resolved = resolve_worker(config, f"workers[{index}]")
    if resolved.task == "embed":
        engine = build_embedding_engine(config, index)
        engine.serving_path = ServingPath(EMBEDDING, 'task "embed": pooled hidden states of the model\'s own forward')
        return engine
    return build_engine(config, index, resolved)


def build_engine(config: WorkerConfig, index: int, resolved: ResolvedWorker | None = None) -> LLMEngine | GenericEngine:
    """Everything one text-generation worker runs, probed against the model's own forward."""
    path = f"workers[{index}]"
    resolved = resolved or resolve_worker(config, path)
    if resolved.task == "embed":
        raise ConfigError(f'{path}.model_path = "{config.model_path}": an embedding model, which cannot '
                          "generate text")
    check_chat_template(config.chat_template, f"{path}.chat_template")
    loaded = _load(config, path, resolved)
    reference = _reference(loaded, config, path)
    if config.engine_path == GENERIC:
        return _generic_engine(loaded, config, path, reference, 'engine_path = "generic" in the config')
    unsupported = _unsupported(loaded)
    if unsupported and config.engine_path == FAST:
        raise ConfigError(f'{path}.engine_path = "fast": the fast path cannot serve {config.model_path}: {unsupported}')
    if unsupported:
        log.info("%s: the fast path cannot serve %s (%s); the generic path serves it", path, config.model_path,
                 unsupported)
        return _generic_engine(loaded, config, path, reference, f"the fast path cannot serve it: {unsupported}")
    engine, cause = _fast_engine(loaded, config, path, reference)
    if engine is not None:
        return engine
    if config.engine_path == FAST:
        raise ConfigError(f'{path}.engine_path = "fast": the fast path fails its load-time check on '
                          f"{config.model_path}: {cause}")
    log.warning("%s: the fast path failed its load-time check (%s); loading the model again for the generic path",
                path, cause)
    del loaded  # the fast path changed this model; free it before loading a fresh one
    _release_memory()
    return _generic_engine(_load(config, path, resolved), config, path, reference,
                           f"the fast path failed its load-time check: {cause}")


def _load(config: WorkerConfig, path: str, resolved: ResolvedWorker) -> LoadedModel:
    loaded = load_model(config, path, resolved)
    loaded.tokenizer.chat_template = resolve_chat_template(config.chat_template, loaded.tokenizer)
    return loaded


def _reference(loaded: LoadedModel, config: WorkerConfig, path: str) -> Reference:
    """The probe's reference, from the model as loaded; a model whose own forward fails is refused."""
    plan = plan_probe(loaded.tokenizer, smallest_window(loaded.model.config), loaded.max_model_len, loaded.device)
    try:
        with _eager_attention(loaded.model):
            reference = compute_reference(loaded.model, plan, loaded.device, loaded.dtype)
    except Exception as exc:  # any failure of the model's own code: nothing to check a path against
        raise ConfigError(f"{path}: {config.model_path} fails its own forward on the probe prompts: "
                          f"{_one_line(exc)}") from None
    _release_memory()  # the forwards' activations, cached by the allocator, are not the KV cache's to lose
    return reference


def _unsupported(loaded: LoadedModel) -> str:
    """Why the fast path cannot serve this model, from its attention contract; "" when it can."""
    try:
        return "; ".join(inspect_attention(loaded.model).unsupported)
    except Exception as exc:  # a model the inspection cannot even run is no model for the fast path
        return f"inspecting its attention raised {_one_line(exc)}"


def _fast_engine(loaded: LoadedModel, config: WorkerConfig, path: str,
                 reference: Reference) -> tuple[LLMEngine | None, str]:
    """The fast path's engine when it passes the probe, else None and the cause (one line)."""
    try:
        engine = build_fast_engine(loaded, config, path)
        result = probe_engine(engine, reference)
    except ConfigError:
        raise
    except Exception as exc:  # anything the fast path cannot do with this model sends it to the generic path
        log.debug("%s: the fast path failed on %s", path, config.model_path, exc_info=True)
        return None, f"it raised {_one_line(exc)}"
    _log_probe(path, FAST, result)
    if not result.passed:
        return None, result.cause
    why = 'engine_path = "fast" in the config' if config.engine_path == FAST else "the attention contract is served"
    engine.serving_path = ServingPath(FAST, f"{why}; {result.summary()}")
    return engine, ""


def _generic_engine(loaded: LoadedModel, config: WorkerConfig, path: str, reference: Reference,
                    why: str) -> GenericEngine:
    """The generic path's engine; it must pass the probe, or the worker is refused.

    The model runs with the attention implementation it loaded with; if that fails the probe and is
    not transformers' eager attention (the reference's), eager is tried before refusing: some
    transformers releases' SDPA path drops a feature of the model (5.17 loses Gemma 2's soft-cap).
    """
    engine, cause = _probed_generic_engine(loaded, config, path, reference, why)
    if engine is None and _attention_implementation(loaded.model) not in (None, "eager"):
        log.warning("%s: the generic path with %s attention fails its load-time check (%s); trying eager attention",
                    path, _attention_implementation(loaded.model), cause)
        try:
            loaded.model.set_attn_implementation("eager")  # type: ignore[operator]
        except Exception as exc:  # a model with no choice of attention: the first cause stands
            log.debug("%s: cannot switch to eager attention: %s", path, _one_line(exc))
        else:
            engine, cause = _probed_generic_engine(loaded, config, path, reference, why + " (eager attention)")
    if engine is not None:
        return engine
    if config.engine_path == GENERIC:
        raise ConfigError(f'{path}.engine_path = "generic": the generic path fails its load-time check on '
                          f"{config.model_path}: {cause}")
    raise ConfigError(f"{path}: cannot serve {config.model_path} correctly: {why}, and the generic path fails "
                      f"its load-time check too: {cause}")


def _probed_generic_engine(loaded: LoadedModel, config: WorkerConfig, path: str, reference: Reference,
                           why: str) -> tuple[GenericEngine | None, str]:
    """The generic path's engine when it passes the probe, else None and the cause (one line)."""
    from llmserve.generic.builder import build_generic_engine

    try:
        engine = build_generic_engine(loaded, config, path)
        result = probe_engine(engine, reference)
    except ConfigError:
        raise
    except Exception as exc:  # refused by the caller, with the cause
        log.debug("%s: the generic path failed on %s", path, config.model_path, exc_info=True)
        return None, f"it raised {_one_line(exc)}"
    _log_probe(path, GENERIC, result)
    if not result.passed:
        return None, result.cause
    engine.serving_path = ServingPath(GENERIC, f"{why}; {result.summary()}")
    return engine, ""


def _attention_implementation(model: torch.nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


@contextmanager
def _eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """transformers' eager attention while inside: the model's definition, no kernel shortcuts, is
    what the probe compares with (SDPA in transformers 5.17 drops Gemma 2's soft-cap)."""
    previous = _attention_implementation(model)
    setter: Any = getattr(model, "set_attn_implementation", None)
    if previous in (None, "eager") or setter is None:
        yield
        return
    try:
        setter("eager")
    except Exception:  # remote code or a model without a choice: its own attention is the reference
        yield
        return
    try:
        yield
    finally:
        setter(previous)


def build_fast_engine(loaded: LoadedModel, config: WorkerConfig, path: str) -> LLMEngine:
    """The fast path: the paged KV cache and our attention inside the model (which this changes)."""
    spec = kv_cache_spec(loaded, config)
    hf_attention.install(loaded.model)
    if config.fuse_projections and loaded.fast_kernels:  # plain Linears on one device only
        fuse_projections(loaded.model)
    if make_fp8_traceable(loaded.model):
        log.info("%s: compressed-tensors FP8 layers multiply through torch._scaled_mm (traceable)", path)
    kv_cache = KVCache(spec, loaded.layer_devices or loaded.device)
    pool = BlockPool(spec.num_blocks, spec.block_size, config.enable_prefix_caching)
    scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens), pool)
    # Split or bitsandbytes models run eagerly on the torch attention path: Triton kernels
    # launch on the current device, not on each layer's.
    fast_kernels = loaded.fast_kernels
    runner = ModelRunner(loaded.model, kv_cache, loaded.device, max_num_seqs=config.max_num_seqs,
                         max_num_batched_tokens=config.max_num_batched_tokens,
                         max_model_len=loaded.max_model_len, use_triton=fast_kernels,
                         use_cuda_graphs=config.cuda_graphs and fast_kernels, compile_model=config.compile,
                         compile_eager=config.cpu_compile and loaded.device.type == "cpu")
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
        async_scheduling=config.async_scheduling and fast_kernels and loaded.device.type == "cuda",
    )


def _log_probe(path: str, name: str, result: ProbeResult) -> None:
    level = logging.INFO if result.passed else logging.WARNING
    log.log(level, "%s: %s path %s", path, name, result.describe())


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _weights_dtype(loaded: LoadedModel) -> str:
    dtype = str(loaded.dtype).removeprefix("torch.")
    return f"{dtype} ({loaded.quantization} weights, bitsandbytes)" if loaded.quantization else dtype
