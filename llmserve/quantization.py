"""Pre-quantized checkpoints: the format a checkpoint's config.json declares, and whether this
machine has the package transformers needs to load it.

transformers loads these itself (`quantization_config` in config.json): fine-grained FP8 and
compressed-tensors FP8 (the H200's native formats), GPTQ and AWQ. Their linear layers stay the
model's own modules, so the fast path serves them as it serves any model (the fused projections
leave them alone: `fused_projections.is_dense`), checked by the same load-time probe. A format
whose package is missing is refused at start-up with one line naming the package, instead of
transformers' traceback from inside the worker.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch

from llmserve.config import WorkerConfig
from llmserve.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointFormat:
    """A `quant_method` transformers loads, and what it needs installed."""

    label: str
    modules: tuple[str, ...]
    """Import names of the packages transformers needs for it."""
    pip: str
    """The `pip install` arguments that provide them."""
    gpu_modules: tuple[str, ...] = ()
    """What it needs on top on a GPU, where transformers runs it through extra kernels."""
    gpu_pip: str = ""


FORMATS: dict[str, CheckpointFormat] = {
    # On a GPU transformers runs fine-grained FP8 through the hub kernel kernels-community/finegrained-fp8,
    # fetched by the `kernels` package (on a CPU it dequantizes on load).
    "fp8": CheckpointFormat("fine-grained FP8", ("accelerate",), "accelerate", ("kernels",),
                            "kernels; its kernel kernels-community/finegrained-fp8 is fetched from the Hub"),
    "compressed-tensors": CheckpointFormat("compressed-tensors", ("compressed_tensors",), '"compressed-tensors>=0.15"'),
    "gptq": CheckpointFormat("GPTQ", ("optimum", "gptqmodel"), "optimum gptqmodel"),
    "awq": CheckpointFormat("AWQ", ("gptqmodel", "accelerate"), "gptqmodel accelerate"),
    "bitsandbytes": CheckpointFormat("bitsandbytes", ("bitsandbytes",), '"llmserve[quant]"'),
}


def checkpoint_quantization(hf_config: Any) -> str | None:
    """The checkpoint's `quant_method` ("fp8", "gptq", ...), None for full-precision weights."""
    quant = getattr(hf_config, "quantization_config", None)
    if quant is None:
        return None
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    method = getattr(method, "value", method)  # transformers' QuantizationMethod enum
    return str(method) if method else None


def missing_modules(method: str, on_gpu: bool = False) -> list[str]:
    """The packages format `method` needs that are not installed (none for a format not listed)."""
    fmt = FORMATS.get(method)
    if fmt is None:
        return []
    needed = fmt.modules + (fmt.gpu_modules if on_gpu else ())
    return [name for name in needed if importlib.util.find_spec(name) is None]


def check_quantized_checkpoint(config: WorkerConfig, hf_config: Any, path: str,
                               device: torch.device | None = None) -> str | None:
    """The checkpoint's quantization, refused in one line where it cannot load here; None if none."""
    method = checkpoint_quantization(hf_config)
    if method is None:
        return None
    fmt = FORMATS.get(method)
    label = fmt.label if fmt is not None else method
    for key in ("load_8bit", "load_4bit"):
        if getattr(config, key):
            raise ConfigError(f'{path}.{key} = true: "{config.model_path}" is already quantized ({label}); '
                              f"remove {key}")
    on_gpu = device is not None and device.type == "cuda"
    missing = missing_modules(method, on_gpu)
    if missing and fmt is not None:
        names = " and ".join(name.replace("_", "-") for name in missing)
        gpu_only = on_gpu and set(missing) <= set(fmt.gpu_modules)  # what only a GPU needs is missing
        pip = fmt.gpu_pip if gpu_only else fmt.pip
        where = " on a GPU" if gpu_only else ""
        raise ConfigError(f'{path}.model_path = "{config.model_path}": a {label} checkpoint{where} needs {names}, '
                          f"not installed (pip install {pip})")
    return method


def describe_quantized(method: str, model: torch.nn.Module) -> str:
    """What the weights are once loaded: FP8 stays 8-bit where the device has FP8 kernels, else
    transformers dequantizes it."""
    dtypes = {p.dtype for p in model.parameters()}
    is_8bit = any(d.itemsize == 1 for d in dtypes)  # fp8 / int8 weights
    is_packed = any(d in (torch.int32, torch.int64, torch.uint8) for d in dtypes)  # GPTQ / AWQ packed ints
    # compressed-tensors may decompress the weights (on a CPU, at the first forward) yet keep each
    # layer's quantization scheme (its FP8 activations) in the layer's own forward.
    has_scheme = any(hasattr(module, "quantization_scheme") for module in model.modules())
    kept = "kept quantized" if is_8bit or is_packed or has_scheme else "dequantized on load (no kernels for it here)"
    fmt = FORMATS.get(method)
    return f"{fmt.label if fmt is not None else method} checkpoint, {kept}"


def settle_compressed_tensors(model: torch.nn.Module) -> int:
    """Settle a compressed-tensors model that sits whole on one device: decompress it now and take
    it out of compressed-tensors' offloading.

    compressed-tensors decompresses a checkpoint either while transformers loads it or at the first
    forward (a pre-hook, as on a CPU), and in both cases it moves the model onto its own offloading:
    every module's parameters behind an offload cache and its forward wrapped to send the inputs to
    the device the weights were loaded on (the CPU, before the worker moves the model). Those
    wrappers would keep sending activations back there, and they defeat both `torch.compile`
    (dynamo cannot trace their pointer checks) and CUDA-graph capture (a pageable host copy). A
    model on one device needs none of it. Returns how many modules were unwrapped.
    """
    try:
        from compressed_tensors.offload import remove_dispatch
        from compressed_tensors.offload.cache.base import OffloadCache
    except ImportError:
        return 0
    pending = getattr(model, "ct_decompress_hook", None)
    hook_id = getattr(pending, "id", None)
    hook = model._forward_pre_hooks.get(hook_id) if isinstance(hook_id, int) else None
    if hook is not None:  # run the first-forward decompression now, not inside the probe
        hook(model, ())
    wrapped = sum(isinstance(module._parameters, OffloadCache) for module in model.modules())
    if wrapped:
        remove_dispatch(model, onload_tensors=True)
    return wrapped
