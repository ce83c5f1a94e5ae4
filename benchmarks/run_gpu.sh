#!/usr/bin/env bash
# The whole GPU benchmark of issue 3 in one go, on a machine with one NVIDIA GPU and no network.
# Needs: python3 with torch (CUDA), transformers, triton, and llmserve's dependencies importable
# (pip install -e . or PYTHONPATH). Writes every JSON and log under OUT (default ./gpu-results).
#
#   bash benchmarks/run_gpu.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu-results}}
MODEL=${MODEL:-/tmp/llama-3.2-1b-random}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
git rev-parse HEAD 2>/dev/null | tee "$OUT/commit.txt" || true
[ -f "$MODEL/config.json" ] || python3 -m llmserve tiny-model "$MODEL" --preset llama-3.2-1b
python3 benchmarks/gpu_attention_check.py --quick | tee "$OUT/attention.txt"
python3 benchmarks/gpu_correctness.py --model-path "$MODEL" --out "$OUT/correctness.json" | tee "$OUT/correctness.txt"
# bf16 greedy agreement means little on random weights (near-ties everywhere): train the same shape
# for a few minutes on the stdlib corpus and check again with held-out text as prompts.
python3 benchmarks/gpu_train_checkpoint.py --model-path "$MODEL" --save-dir "$MODEL-trained" --seconds 200 \
  --out "$OUT/train.json" | tee "$OUT/train.txt"
python3 benchmarks/gpu_correctness.py --model-path "$MODEL-trained" --text-prompts \
  --out "$OUT/correctness_trained.json" | tee "$OUT/correctness_trained.txt"
# Issue 14: every model family (and the remote-code model) bf16 against transformers' own bf16 forward
# and float32 against generate; a family that fails is a row of the table, so it does not stop the run.
python3 benchmarks/gpu_model_matrix.py --out "$OUT/matrix.json" | tee "$OUT/matrix.txt" || true
python3 benchmarks/gpu_generic_throughput.py --out "$OUT/generic_throughput.json" | tee "$OUT/generic_throughput.txt"
# Pre-quantized FP8 (fine-grained and compressed-tensors, needs `pip install compressed-tensors`) of the
# trained checkpoint; a refused format is a row with its one-line reason, so it does not stop the run.
python3 benchmarks/gpu_quantized.py --model-path "$MODEL-trained" --out "$OUT/quantized.json" \
  | tee "$OUT/quantized.txt" || true
python3 benchmarks/gpu_serve_bench.py --model-path "$MODEL" --out-dir "$OUT" --sampled --logprobs | tee "$OUT/serve.txt"
python3 benchmarks/gpu_references.py --model-path "$MODEL" --out "$OUT/references.json" | tee "$OUT/references.txt"
python3 benchmarks/gpu_step_profile.py --model-path "$MODEL" --out "$OUT/step_profile.json" | tee "$OUT/step_profile.txt"
