#!/usr/bin/env bash
# Before/after on one machine (issue 14: "the 1B benchmark row at c=1 and c=256 unchanged"): the
# c=1 latency row and the 512-request c=256 throughput row of gpu_serve_bench.py, for the base
# commit's code and this checkout's, alternately (base, head, base, head). The base's llmserve/ sits
# in BASE (default .base/, e.g. `git archive 7bf7dd9 llmserve | tar -x -C .base`); this checkout's
# gpu_serve_bench.py drives both, starting each server from its side's folder (--server-root), so
# `python3 -m llmserve run` imports that side's package (recorded as server_package in each JSON).
#
#   bash benchmarks/gpu_ab_rows.sh OUT
#
# Writes OUT/<side>-<round>/serve_bench.json and server.log, OUT/<side>-<round>.txt, and a table
# OUT/ab.md. Environment: MODEL (default /tmp/llama-1b, built when missing), BASE, ROUNDS (2),
# PORT (8123), BENCH_ARGS (extra gpu_serve_bench.py arguments; `--device cpu` smoke-tests this script).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_ab_rows.sh OUT}
MODEL=${MODEL:-/tmp/llama-1b}
BASE=${BASE:-.base}
ROUNDS=${ROUNDS:-2}
PYTHON=${PYTHON:-python3}
[ -f "$BASE/llmserve/__init__.py" ] || { echo "no base package at $BASE/llmserve" >&2; exit 2; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -f "$MODEL/config.json" ] || "$PYTHON" -m llmserve tiny-model "$MODEL" --preset llama-3.2-1b
for round in $(seq "$ROUNDS"); do
  for side in base head; do
    root=.
    [ "$side" = base ] && root=$BASE
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
    "$PYTHON" benchmarks/gpu_serve_bench.py --model-path "$MODEL" --out-dir "$OUT/$side-$round" \
      --rows latency,throughput --server-root "$root" --port "${PORT:-8123}" ${BENCH_ARGS:-} | tee "$OUT/$side-$round.txt"
  done
done
"$PYTHON" - "$OUT" <<'PY' | tee "$OUT/ab.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| run | server package | c=1 out tok/s | c=1 TPOT p50 ms | c=1 TTFT p50 ms | c=256 out tok/s | c=256 TPOT p50 ms | failed |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for path in sorted(out.glob("*-*/serve_bench.json"), key=lambda p: (p.parent.name.split("-")[1], p.parent.name)):
    latency, throughput = json.loads(path.read_text())
    lm, tm = latency["metrics"], throughput["metrics"]
    print(f"| {path.parent.name} | {latency['server_package']} | {lm['output_tokens_per_s']:.0f} | "
          f"{lm['tpot']['median_ms']:.2f} | {lm['ttft']['median_ms']:.1f} | {tm['output_tokens_per_s']:.0f} | "
          f"{tm['tpot']['median_ms']:.2f} | {lm['num_failed'] + tm['num_failed']} |")
PY
