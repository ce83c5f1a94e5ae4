"""Where a model's weights go, and where each layer runs.

A worker's model sits on one device (`.to(device)` after loading), or, when it asks for several
GPUs, a memory cap, CPU offloading or bitsandbytes quantization, on an accelerate device map:
a dict computed here from the model's shape (`infer_device_map`, balanced over the GPUs and capped
by `max_gpu_memory`), checked, then given to `from_pretrained`. Modules mapped to "cpu" still
*run* on the main GPU (accelerate streams their weights in), so a layer's execution device, which
is where its KV cache must live, is its GPU, or the main GPU for offloaded layers.
`keep_hidden_states_on` keeps the final hidden states on the main GPU, where the runner's
`logits_to_keep` indices are.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from llmserve.config import WorkerConfig
from llmserve.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    """How `from_pretrained` is asked to place the weights."""

    main_device: torch.device
    """Where inputs go and logits come back: the device, or the lowest GPU of a device map."""
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    """`device_map`, `max_memory` and `quantization_config` for `from_pretrained` (empty: load, then move)."""
    quantization: str | None = None
    """"8-bit" or "4-bit NF4" (bitsandbytes), None for full-precision weights."""
    fast_kernels: bool = True
    """Whether the Triton kernels, CUDA graphs and fused projections can run: the whole model on one
    device without accelerate hooks or bitsandbytes layers (a pre-quantized checkpoint loaded
    straight onto its GPU qualifies)."""

    @property
    def uses_device_map(self) -> bool:
        return "device_map" in self.load_kwargs


def gpu_indices(config: WorkerConfig, device: torch.device) -> list[int]:
    """The GPUs a worker uses: `num_gpus` of them from the device's index on."""
    first = device.index or 0
    return list(range(first, first + config.num_gpus))


def check_gpus(config: WorkerConfig, device: torch.device, path: str) -> None:
    """`num_gpus` GPUs from the device's index on must be visible."""
    if device.type != "cuda" or config.num_gpus == 1:
        return
    visible = torch.cuda.device_count()
    last = gpu_indices(config, device)[-1]
    if last >= visible:
        raise ConfigError(f"{path}.num_gpus = {config.num_gpus}: GPUs {device.index or 0}..{last} asked for "
                          f"(device \"{config.device}\"), only {visible} GPU(s) visible")


def check_bitsandbytes(config: WorkerConfig, path: str) -> None:
    """8/4-bit loading needs the optional bitsandbytes package."""
    key = "load_8bit" if config.load_8bit else "load_4bit" if config.load_4bit else None
    if key is None:
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f'{path}.{key} = true: bitsandbytes is not installed '
                          '(pip install "llmserve[quant]")') from None


def plan_placement(config: WorkerConfig, device: torch.device, dtype: torch.dtype, hf_config: Any,
                   path: str = "workers[0]", prequantized: str | None = None) -> Placement:
    """The load arguments for a worker on `device` (already checked against the machine).

    A pre-quantized checkpoint (`prequantized`, its `quant_method`) on one GPU is loaded straight
    onto it: its quantizer then picks the GPU's kernels (loaded on the CPU and moved, FP8 is
    dequantized or left behind compressed-tensors' CPU offloading).

    A device map is computed here, as a dict, rather than left to `from_pretrained` as a strategy
    name: bitsandbytes keeps CPU-offloaded modules unquantized only for the modules a dict maps
    to "cpu", and a dict can be checked before any weight is read.
    """
    quantization = _quantization(config, dtype)
    label = None if quantization is None else ("8-bit" if config.load_8bit else "4-bit NF4")
    extra: dict[str, Any] = {} if quantization is None else {"quantization_config": quantization}
    if device.type != "cuda":
        return Placement(device)
    gpus = gpu_indices(config, device)
    if config.num_gpus == 1 and not config.max_gpu_memory and not config.cpu_offloading:
        if quantization is not None:
            return Placement(device, {"device_map": {"": gpus[0]}, **extra}, label, fast_kernels=False)
        if prequantized is not None:
            return Placement(device, {"device_map": {"": gpus[0]}, **prequantized_load_kwargs(prequantized)})
        return Placement(device)
    cap = config.max_gpu_memory_bytes
    max_memory: dict[int | str, int] = {
        i: cap if cap is not None else _free_bytes(i, config.gpu_memory_utilization) for i in gpus
    }
    if config.cpu_offloading:
        max_memory["cpu"] = _free_cpu_bytes()
    device_map = infer_device_map(hf_config, max_memory, dtype, config)
    check_offloading(device_map, config, path)
    # Inputs go to the lowest GPU used: the one accelerate runs offloaded modules on, and the only
    # one when the whole model landed on a single GPU (then transformers adds no hooks).
    main = min(v for v in device_map.values() if isinstance(v, int))
    return Placement(torch.device("cuda", main), {"device_map": device_map, **extra}, label, fast_kernels=False)


def infer_device_map(hf_config: Any, max_memory: dict[int | str, int], dtype: torch.dtype,
                     config: WorkerConfig) -> dict[str, int | str]:
    """accelerate's balanced device map for the model's shape (built empty, on the meta device).

    Quantized: the weights of Linear layers (but the LM head) count 1 byte (8-bit) or half a byte
    (4-bit) per parameter, everything else `dtype`; GPU budgets keep 10% for quantization buffers,
    as transformers does.
    """
    from accelerate import init_empty_weights
    from accelerate.utils import get_balanced_memory, infer_auto_device_map
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, trust_remote_code=config.trust_remote_code)
    empty.tie_weights()  # tied embeddings are one tensor on one device
    no_split = sorted(getattr(empty, "_no_split_modules", None) or [])
    sizes: dict[str, Any] = {"dtype": dtype}
    if config.load_8bit or config.load_4bit:
        quantized = {f"{name}.weight" for name, module in empty.named_modules()
                     if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")}
        sizes = {"dtype": torch.int8 if config.load_8bit else "int4",
                 "special_dtypes": {name: dtype for name, _ in empty.named_parameters() if name not in quantized}}
        max_memory = {key: value if key == "cpu" else int(value * 0.9) for key, value in max_memory.items()}
    balanced = get_balanced_memory(empty, max_memory=max_memory, no_split_module_classes=no_split, **sizes)
    with warnings.catch_warnings():
        # accelerate warns about a few bytes of buffers whenever layers go to CPU; they stay on the GPU.
        warnings.filterwarnings("ignore", message="Current model requires", category=UserWarning)
        device_map = infer_auto_device_map(empty, max_memory=balanced, no_split_module_classes=no_split, **sizes)
    return dict(device_map)


def check_offloading(device_map: Mapping[str, Any], config: WorkerConfig, path: str) -> None:
    """accelerate spills what does not fit to CPU, then disk; only CPU, and only when asked for, is fine."""
    places = {str(v) for v in device_map.values()}
    offloaded = places & {"cpu", "disk"}
    if "disk" in offloaded or (offloaded and not config.cpu_offloading) or not places - {"cpu", "disk"}:
        raise ConfigError(_does_not_fit(config, path))


def _does_not_fit(config: WorkerConfig, path: str) -> str:
    where = f"{config.num_gpus} GPU(s)" + (f" x {config.max_gpu_memory}" if config.max_gpu_memory else "")
    if config.max_gpu_memory:
        also = "" if config.cpu_offloading else ", or offload to CPU (load_8bit + cpu_offloading)"
        return (f'{path}.max_gpu_memory = "{config.max_gpu_memory}": the weights do not fit on {where}'
                f"{' and CPU memory' if config.cpu_offloading else ''}; raise max_gpu_memory or num_gpus{also}")
    return (f"{path}.num_gpus = {config.num_gpus}: the weights do not fit in the free memory of {where}; "
            "use more GPUs, quantize (load_8bit / load_4bit) or offload (cpu_offloading)")


def _quantization(config: WorkerConfig, dtype: torch.dtype) -> Any:
    if not (config.load_8bit or config.load_4bit):
        return None
    from transformers import BitsAndBytesConfig  # bitsandbytes itself is imported by transformers

    if config.load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=config.cpu_offloading)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def prequantized_load_kwargs(method: str) -> dict[str, Any]:
    """Load options for a pre-quantized checkpoint on a GPU: compressed-tensors FP8 keeps its FP8
    weights and runs `scaled_mm` where the installed transformers offers it
    (`use_optimized_inference`, which it applies only where the GPU has FP8 matmuls); older
    versions dequantize on load."""
    if method != "compressed-tensors":
        return {}
    import inspect

    from transformers import CompressedTensorsConfig

    if "use_optimized_inference" not in inspect.signature(CompressedTensorsConfig.__init__).parameters:
        return {}
    return {"quantization_config": CompressedTensorsConfig(use_optimized_inference=True)}


def _free_bytes(index: int, utilization: float) -> int:
    free, _ = torch.cuda.mem_get_info(index)
    return int(free * utilization)


def _free_cpu_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available * 0.9)


def execution_device(value: int | str | torch.device, main_device: torch.device) -> torch.device:
    """The device that runs a module mapped to `value` ("cpu"/"disk" modules run on the main device)."""
    if isinstance(value, int):
        return torch.device("cuda", value)
    if str(value) in ("cpu", "disk") and main_device.type == "cuda":
        return main_device
    return torch.device(value)


def layer_devices(model: torch.nn.Module, num_layers: int, main_device: torch.device) -> list[torch.device]:
    """The execution device of each attention layer (by `layer_idx`), read from `model.hf_device_map`."""
    devices = [main_device] * num_layers
    device_map: Mapping[str, Any] | None = getattr(model, "hf_device_map", None)
    if not device_map:
        return devices
    for name, module in model.named_modules():
        index = getattr(module, "layer_idx", None)
        if isinstance(index, int) and 0 <= index < num_layers:
            value = device_map[_longest_prefix(name, device_map)]
            devices[index] = execution_device(value, main_device)
    return devices


def _longest_prefix(name: str, device_map: Mapping[str, Any]) -> str:
    matches = [key for key in device_map if key == "" or name == key or name.startswith(key + ".")]
    if not matches:
        raise ValueError(f"module {name} is missing from the device map")
    return max(matches, key=len)


def describe_placement(devices: list[torch.device], device_map: Mapping[str, Any] | None = None) -> str:
    """A one-line summary: "cuda:0" or "cuda:0 (layers 0-7) + cuda:1 (layers 8-15)", plus offloading."""
    runs: list[tuple[torch.device, int, int]] = []
    for i, device in enumerate(devices):
        if runs and runs[-1][0] == device:
            runs[-1] = (device, runs[-1][1], i)
        else:
            runs.append((device, i, i))
    if len({device for device, _, _ in runs}) <= 1:
        text = str(devices[0]) if devices else "?"
    else:
        text = " + ".join(f"{device} (layers {a}-{b})" if a != b else f"{device} (layer {a})" for device, a, b in runs)
    offloaded = Counter(str(v) for v in (device_map or {}).values() if str(v) in ("cpu", "disk"))
    if offloaded:
        text += ", " + ", ".join(f"{n} module(s) offloaded to {where}" for where, n in sorted(offloaded.items()))
    return text


def weight_bytes_by_device(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of parameters per device ("meta" parameters are offloaded: counted as "cpu")."""
    totals: dict[str, int] = {}
    for param in model.parameters():
        where = "cpu" if param.device.type == "meta" else str(param.device)
        totals[where] = totals.get(where, 0) + param.numel() * param.element_size()
    return totals


def keep_hidden_states_on(model: torch.nn.Module, main_device: torch.device) -> None:
    """Move the base model's final hidden states to `main_device` when layers span devices.

    The causal-LM head indexes them with `logits_to_keep`, a tensor on the main device; the last
    layers (and the final norm) may have run elsewhere.
    """
    device_map = getattr(model, "hf_device_map", None) or {}
    if len({str(v) for v in device_map.values()}) <= 1:
        return
    base = getattr(model, "base_model", model)
    if base is model:
        return

    def to_main(module: torch.nn.Module, args: Any, output: Any) -> Any:
        hidden = getattr(output, "last_hidden_state", None)
        if isinstance(hidden, torch.Tensor) and hidden.device != main_device:
            output.last_hidden_state = hidden.to(main_device)
        return output

    base.register_forward_hook(to_main)
