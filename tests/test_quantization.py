"""Pre-quantized checkpoints: FP8 checkpoints built here from the tiny model's weights (transformers'
fine-grained FP8 and compressed-tensors' float-quantized format) load and are served on the fast
path token for token as the model's own `generate`; formats whose package is missing are refused
at start-up in one line naming the package."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmserve.config import WorkerConfig, parse_config
from llmserve.engine.builder import build_engine
from llmserve.engine.fused_projections import is_dense
from llmserve.engine.request import SamplingParams
from llmserve.errors import ConfigError
from llmserve.loading import load_model
from llmserve.quantization import (
    check_quantized_checkpoint,
    checkpoint_quantization,
    describe_quantized,
    settle_compressed_tensors,
)
from llmserve.server import preflight
from llmserve.tiny.quantized import (
    dequantize_blockwise,
    write_compressed_fp8_checkpoint,
    write_fp8_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 32  # divides every projection of the tiny model (128, 64, 384)
PROMPTS = ("def quantize(weight):\n    return", "import os\nimport sys\n\nclass Loader:")
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def fp8_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with every projection in fine-grained FP8 (`quant_method = "fp8"`)."""
    return write_fp8_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("fp8") / "model", block=BLOCK)


@pytest.fixture(scope="module")
def compressed_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model in compressed-tensors' FP8 format (per-channel weights, dynamic FP8 activations)."""
    return write_compressed_fp8_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("compressed") / "model")


def test_the_fp8_writers_quantize_within_fp8_precision(tiny_model_dir: Path, fp8_dir: Path,
                                                        compressed_dir: Path) -> None:
    dense = load_file(str(tiny_model_dir / "model.safetensors"))["model.layers.2.mlp.down_proj.weight"]
    blockwise = load_file(str(fp8_dir / "model.safetensors"))
    weight = blockwise["model.layers.2.mlp.down_proj.weight"]
    assert weight.dtype == torch.float8_e4m3fn and weight.shape == dense.shape
    restored = dequantize_blockwise(weight, blockwise["model.layers.2.mlp.down_proj.weight_scale_inv"])
    torch.testing.assert_close(restored, dense, rtol=2**-3, atol=1e-6)  # e4m3: 3 mantissa bits
    channel = load_file(str(compressed_dir / "model.safetensors"))
    restored = channel["model.layers.2.mlp.down_proj.weight"].float() * channel["model.layers.2.mlp.down_proj.weight_scale"]
    torch.testing.assert_close(restored, dense, rtol=2**-3, atol=1e-6)


def _serve_greedy(engine: object, prompt_ids: list[list[int]]) -> list[list[int]]:
    tokens: dict[int, list[int]] = {i: [] for i in range(len(prompt_ids))}
    for seq_id, ids in enumerate(prompt_ids):
        engine.add(seq_id, ids, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True))
    for _ in range(200):
        if not engine.has_work:
            break
        for out in engine.step():
            assert out.error is None, out.error
            tokens[out.seq_id] += out.token_ids
    assert not engine.has_work
    return list(tokens.values())


def _generate(model_dir: Path, prompt_ids: list[list[int]]) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outputs = []
    with torch.inference_mode():
        for ids in prompt_ids:
            out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                                 do_sample=False)
            outputs.append(out[0, len(ids):].tolist())
    return outputs


def _prompt_ids(model_dir: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer.encode(text) for text in PROMPTS]


def test_fine_grained_fp8_loads_dequantized_on_cpu(fp8_dir: Path) -> None:
    config = WorkerConfig(model_path=str(fp8_dir), dtype="float32", kv_cache_tokens=4096)
    preflight(parse_config({"workers": [{"model_path": str(fp8_dir)}]}))
    loaded = load_model(config)
    assert checkpoint_quantization(AutoConfig.from_pretrained(fp8_dir)) == "fp8"
    # No FP8 kernels on a CPU: transformers dequantizes each block with its scale.
    stored = load_file(str(fp8_dir / "model.safetensors"))
    q_proj = loaded.model.model.layers[1].self_attn.q_proj
    expected = dequantize_blockwise(stored["model.layers.1.self_attn.q_proj.weight"],
                                    stored["model.layers.1.self_attn.q_proj.weight_scale_inv"])
    torch.testing.assert_close(q_proj.weight, expected, rtol=0, atol=0)
    assert describe_quantized("fp8", loaded.model) == "fine-grained FP8 checkpoint, dequantized on load (no kernels for it here)"


@pytest.mark.parametrize("checkpoint", ["fp8_dir", "compressed_dir"])
def test_fp8_checkpoints_are_served_on_the_fast_path(checkpoint: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(checkpoint)
    engine = build_engine(WorkerConfig(model_path=str(model_dir), dtype="float32", kv_cache_tokens=4096,
                                       block_size=8), 0)
    assert engine.serving_path.name == "fast", engine.serving_path.reason
    prompt_ids = _prompt_ids(model_dir)
    assert _serve_greedy(engine, prompt_ids) == _generate(model_dir, prompt_ids)


def test_compressed_tensors_linears_stay_quantized_and_unfused(compressed_dir: Path) -> None:
    loaded = load_model(WorkerConfig(model_path=str(compressed_dir), dtype="float32", kv_cache_tokens=4096))
    # On a CPU compressed-tensors decompresses the FP8 weights (at load here, at the first forward
    # in transformers alone), yet each projection keeps its quantization scheme and its own forward
    # (FP8 activations): none is fused into a q/k/v GEMM.
    q_proj = loaded.model.model.layers[0].self_attn.q_proj
    assert hasattr(q_proj, "quantization_scheme") and not is_dense(q_proj)
    assert describe_quantized("compressed-tensors", loaded.model) == "compressed-tensors checkpoint, kept quantized"
    engine = build_engine(WorkerConfig(model_path=str(compressed_dir), dtype="float32", kv_cache_tokens=4096), 0)
    attention = engine.runner.model.model.layers[0].self_attn
    assert type(attention.q_proj) is torch.nn.Linear and hasattr(attention.q_proj, "quantization_scheme")
    assert not is_dense(attention.q_proj)


def _with_method(tiny_model_dir: Path, target: Path, quantization: dict) -> Path:
    shutil.copytree(tiny_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["quantization_config"] = quantization
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize(("quantization", "label", "packages", "pip"), [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "GPTQ", ("optimum", "gptqmodel"), "optimum gptqmodel"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}, "AWQ", ("gptqmodel",),
     "gptqmodel accelerate"),
    ({"quant_method": "compressed-tensors", "format": "float-quantized"}, "compressed-tensors",
     ("compressed_tensors",), '"compressed-tensors>=0.15"'),
])
def test_a_missing_package_is_named_at_start_up(quantization: dict, label: str, packages: tuple[str, ...],
                                                pip: str, tiny_model_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = _with_method(tiny_model_dir, tmp_path / "model", quantization)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in packages else real_find_spec(name, *a))
    with pytest.raises(ConfigError) as info:
        preflight(parse_config({"workers": [{"model_path": str(model_dir)}]}))
    names = " and ".join(p.replace("_", "-") for p in packages)
    assert str(info.value) == (f'workers[0].model_path = "{model_dir}": a {label} checkpoint needs {names}, '
                               f"not installed (pip install {pip})")


def test_fine_grained_fp8_on_a_gpu_names_the_kernels_package(fp8_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kernels" else real_find_spec(name, *a))
    hf_config = AutoConfig.from_pretrained(fp8_dir)
    config = WorkerConfig(model_path=str(fp8_dir), device="cuda")
    assert check_quantized_checkpoint(config, hf_config, "w", torch.device("cpu")) == "fp8"  # dequantized there
    with pytest.raises(ConfigError) as info:
        check_quantized_checkpoint(config, hf_config, "w", torch.device("cuda", 0))
    assert str(info.value) == (f'w.model_path = "{fp8_dir}": a fine-grained FP8 checkpoint on a GPU needs kernels, '
                               "not installed (pip install kernels; its kernel kernels-community/finegrained-fp8 "
                               "is fetched from the Hub)")


def test_bitsandbytes_on_top_of_a_quantized_checkpoint_is_refused(fp8_dir: Path) -> None:
    config = WorkerConfig(model_path=str(fp8_dir), device="cuda", load_4bit=True)
    with pytest.raises(ConfigError, match=r'^w\.load_4bit = true: ".*" is already quantized \(fine-grained FP8\)'):
        check_quantized_checkpoint(config, AutoConfig.from_pretrained(fp8_dir), "w")


def test_the_gpu_script_runs_on_the_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    # benchmarks/gpu_quantized.py's smoke mode: both FP8 formats, fast path, token-identical in float32.
    out = tmp_path / "quantized.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_quantized.py"), "--device", "cpu",
                           "--dtype", "float32", "--model-path", str(tiny_model_dir), "--block", "32", "--num-prompts", "2", "--max-tokens", "4",
                           "--kv-cache-tokens", "8192", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["checkpoint"], r["path"], r["token_identical"]) for r in rows] == [
        ("compressed-tensors-fp8", "fast", 2), ("fine-grained-fp8", "fast", 2)]


def test_compressed_tensors_offload_wrappers_are_dropped_for_one_device(compressed_dir: Path) -> None:
    """compressed-tensors decompresses on load (transformers 5.17) or at the first forward (a pre-hook,
    5.24 on a CPU) and then wraps every module in its own offloading, inputs sent to the load device:
    a worker on one device decompresses at load and takes the wrappers out again."""
    from compressed_tensors.offload.cache.base import OffloadCache

    config = WorkerConfig(model_path=str(compressed_dir), dtype="float32", kv_cache_tokens=4096)
    settled = load_model(config).model
    assert not hasattr(settled, "ct_decompress_hook")
    assert not any(isinstance(m._parameters, OffloadCache) for m in settled.modules())
    assert not hasattr(settled.model.layers[0].self_attn.q_proj, "_original_forward_func")  # not wrapped
    # What the worker undoes: transformers alone leaves the decompression to the first forward,
    # which wraps the modules.
    raw = AutoModelForCausalLM.from_pretrained(compressed_dir, dtype=torch.float32).eval()
    ids = torch.tensor([_prompt_ids(compressed_dir)[0]])
    with torch.inference_mode():
        expected = raw(ids).logits
        assert any(isinstance(m._parameters, OffloadCache) for m in raw.modules())
        assert settle_compressed_tensors(raw) > 0 and settle_compressed_tensors(raw) == 0
        assert not any(isinstance(m._parameters, OffloadCache) for m in raw.modules())
        torch.testing.assert_close(raw(ids).logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(settled(ids).logits, expected, rtol=0, atol=0)
