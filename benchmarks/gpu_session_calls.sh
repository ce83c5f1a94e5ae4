#!/usr/bin/env bash
# This session's GPU rows (issues 14, 15, 18) as two calls on one lent GPU, each under its 10-minute cap;
# every part has its own time limit, so one that hangs costs only itself. The 1B-shape model is built
# into models/ (git-ignored), which a still-warm machine keeps for the second call.
#
#   bash benchmarks/gpu_session_calls.sh A OUT   # host profile + serving rows, peers (llmserve), structured c=64
#   bash benchmarks/gpu_session_calls.sh B OUT   # peers (transformers serve), bf16 matrix, Triton cases, FP8
#   bash benchmarks/gpu_session_calls.sh C OUT   # what A and B could not finish (see below)
#   bash benchmarks/gpu_session_calls.sh D OUT   # FP8 on one GPU, structured c=64, the c=256 row's threads, step profile
#   bash benchmarks/gpu_session_calls.sh E OUT   # step profile, the c=256 row's threads in slices, FP8 compiled, bf16 Gemma
#   bash benchmarks/gpu_session_calls.sh F OUT   # structured c=64 (batch matcher), FP8 compiled, bf16 Gemma, Triton cases
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE_OUT=${OUT:-}  # the lent machine's folder that comes back (the run tool's $OUT), before OUT is reused
PART=${1:?usage: gpu_session_calls.sh A|B OUT}
OUT=${2:?usage: gpu_session_calls.sh A|B OUT}
MODEL=${MODEL:-models/llama-1b}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)" >> "$OUT/gpu.txt" 2>&1
nproc >> "$OUT/gpu.txt"
[ -f "$MODEL/config.json" ] || timeout 240 python3 -m llmserve tiny-model "$MODEL" --preset llama-3.2-1b > "$OUT/build.txt" 2>&1
peers() {  # $1: server, $2: time limit
  timeout "$2" python3 benchmarks/peers.py --model-path "$MODEL" --device cuda --dtype bfloat16 --servers "$1" \
    --concurrency 1 256 --num-prompts 8 512 --input-len 512 --output-len 256 --startup-timeout 200 \
    --level-timeout-s 150 --log-dir "$OUT/peers-logs-$1" --out "$OUT/peers-$1.json" > "$OUT/peers-$1.txt" 2>&1
}
case "$PART" in
  A)
    MODEL=$MODEL timeout 260 bash benchmarks/gpu_host_profile.sh "$OUT/host"
    peers llmserve 170
    timeout 150 python3 benchmarks/structured_throughput.py --device cuda --model-path "$MODEL" --rounds 1 \
      --out-dir "$OUT/structured" > "$OUT/structured.txt" 2>&1
    ;;
  B)
    peers transformers 230
    timeout 190 python3 benchmarks/gpu_model_matrix.py --dtype bfloat16 --out "$OUT/matrix-bf16.json" \
      --time-limit 170 --family-timeout 160 --families gemma3 gemma2 gpt_oss qwen3_moe mixtral llama \
      > "$OUT/matrix-bf16.txt" 2>&1
    timeout 70 python3 -m pytest -q -x -p no:cacheprovider -W ignore::pytest.PytestConfigWarning \
      tests/engine/test_triton_attention.py > "$OUT/triton.txt" 2>&1
    timeout 80 python3 benchmarks/gpu_quantized.py --model-path "$MODEL" --out "$OUT/quantized.json" \
      > "$OUT/quantized.txt" 2>&1
    ;;
  C)  # what A and B left: the c=256 row with the threads' CPU shares, transformers serve at c=256 (one
      # wave of 256), structured c=64 (jsonschema carried), the Triton cases run natively
    ROWS=throughput MODEL=$MODEL timeout 150 bash benchmarks/gpu_host_profile.sh "$OUT/host"
    timeout 200 python3 benchmarks/peers.py --model-path "$MODEL" --device cuda --dtype bfloat16 --servers transformers \
      --concurrency 256 --num-prompts 256 --input-len 512 --output-len 256 --startup-timeout 100 \
      --level-timeout-s 170 --log-dir "$OUT/peers-logs-transformers" --out "$OUT/peers-transformers-c256.json" \
      > "$OUT/peers-transformers-c256.txt" 2>&1
    timeout 130 python3 benchmarks/structured_throughput.py --device cuda --model-path "$MODEL" --rounds 1 \
      --out-dir "$OUT/structured" > "$OUT/structured.txt" 2>&1
    timeout 50 python3 -m pytest -q -x -p no:cacheprovider -W ignore::pytest.PytestConfigWarning \
      tests/engine/triton_cases.py > "$OUT/triton.txt" 2>&1
    ;;
  D)  # FP8 loaded straight onto the GPU, the structured row with the deferred draw, the c=256 row's
      # per-thread CPU, and where a decode step's time goes on this card
    timeout 130 python3 benchmarks/gpu_quantized.py --model-path "$MODEL" --out "$OUT/quantized.json" \
      > "$OUT/quantized.txt" 2>&1
    timeout 170 python3 benchmarks/structured_throughput.py --device cuda --model-path "$MODEL" --rounds 1 \
      --out-dir "$OUT/structured" > "$OUT/structured.txt" 2>&1
    ROWS=throughput MODEL=$MODEL timeout 130 bash benchmarks/gpu_host_profile.sh "$OUT/host"
    timeout 60 python3 benchmarks/gpu_step_profile.py --model-path "$MODEL" --out "$OUT/step_profile.json" \
      > "$OUT/step_profile.txt" 2>&1
    ;;
  E)  # D's step profile had too little time; the c=256 row twice with the threads' CPU in half-second
      # slices (D's window ran past the row's end); FP8 with traceable layers; the bf16 probe's float32
      # comparison on the families it concerns
    timeout 140 python3 benchmarks/gpu_step_profile.py --model-path "$MODEL" --out "$OUT/step_profile.json" \
      > "$OUT/step_profile.txt" 2>&1
    ROWS=throughput RUNS=2 SECONDS_CPU=8 PYSPY=none MODEL=$MODEL timeout 110 bash benchmarks/gpu_host_profile.sh "$OUT/host"
    timeout 100 python3 benchmarks/gpu_quantized.py --model-path "$MODEL" --out "$OUT/quantized.json" \
      > "$OUT/quantized.txt" 2>&1
    timeout 150 python3 benchmarks/gpu_model_matrix.py --dtype bfloat16 --out "$OUT/matrix-bf16.json" \
      --time-limit 140 --family-timeout 135 --families gemma3 gemma2 gpt_oss > "$OUT/matrix-bf16.txt" 2>&1
    ;;
  F)  # Gemma 2/3 under the probe's float32 yardstick over the compared ids and the Triton cases natively,
      # beside compressed-tensors FP8 with traceable layers (fewer prompts: E's ran out of time
      # compiling); then the structured mask's host time. What has finished is packed into the run
      # tool's folder after each step, so a call cut short by the device time left still returns it.
    partial() { [ -n "$DEVICE_OUT" ] && tar -czf "$DEVICE_OUT/partial.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")"; }
    timeout 110 python3 -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestConfigWarning \
      tests/engine/triton_cases.py > "$OUT/triton.txt" 2>&1 &
    cases=$!
    timeout 120 python3 benchmarks/gpu_model_matrix.py --dtype bfloat16 --out "$OUT/matrix-bf16.json" \
      --time-limit 110 --family-timeout 105 --families gemma3 gemma2 > "$OUT/matrix-bf16.txt" 2>&1 &
    matrix=$!
    timeout 110 python3 benchmarks/gpu_quantized.py --model-path "$MODEL" --formats compressed-tensors-fp8 \
      --num-prompts 8 --max-tokens 16 --out "$OUT/quantized.json" > "$OUT/quantized.txt" 2>&1
    partial
    wait "$matrix"
    partial
    wait "$cases"
    partial
    timeout 40 python3 benchmarks/structured_throughput.py --device cuda --model-path "$MODEL" --mask-only \
      --out-dir "$OUT/structured-mask" > "$OUT/structured-mask.txt" 2>&1  # the mask's host time per step
    partial
    if [ "${STRUCTURED:-0}" = 1 ]; then  # the structured row with xgrammar's batch matcher
      timeout 190 python3 benchmarks/structured_throughput.py --device cuda --model-path "$MODEL" --rounds 1 \
        --out-dir "$OUT/structured" > "$OUT/structured.txt" 2>&1
    fi
    ;;
esac
tar -czf "$OUT.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")"
