#!/usr/bin/env bash
# Issue 18 on one GPU: the serving rows (single stream after a 512-token prompt, 512 requests at c=256),
# with each server thread's CPU share (benchmarks/thread_cpu.py) and py-spy sampling the server during the c=256 row: every thread's stacks, and a second recording
# of only the samples that hold the GIL (`--gil`), which shows whether the interpreter lock bounds it.
#
#   bash benchmarks/gpu_host_profile.sh OUT
#
# Environment: MODEL (default /tmp/llama-1b, built when missing), PORT (8123), PYSPY (py-spy binary, "none"
# to skip it: on the lent image it cannot read the server's stacks), RUNS (greedy throughput rows back to
# back, default 1), SECONDS_CPU (thread_cpu's window, sliced in half-seconds; default 6).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_host_profile.sh OUT}
MODEL=${MODEL:-/tmp/llama-1b}
PORT=${PORT:-8123}
PYSPY=${PYSPY:-py-spy}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -f "$MODEL/config.json" ] || python3 -m llmserve tiny-model "$MODEL" --preset llama-3.2-1b
python3 benchmarks/gpu_serve_bench.py --model-path "$MODEL" --out-dir "$OUT" --rows "${ROWS:-latency,throughput}" \
  --port "$PORT" --throughput-runs "${RUNS:-1}" > "$OUT/serve.txt" 2>&1 &
bench=$!
# The latency row comes first (a few single streams); the throughput row's 512 requests start after it.
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
# Wait for the throughput row: its concurrency shows as many open connections.
for _ in $(seq 240); do
  # Established connections to the server's port, from /proc (the lent image has no `ss`).
  n=$(awk -v port="$(printf '%04X' "$PORT")" 'NR > 1 && $4 == "01" && substr($2, index($2, ":") + 1) == port' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null | wc -l)
  [ "$n" -ge 128 ] && break
  sleep 0.5
done
sleep 2
pid=$(pgrep -f -- "-m llmserve run" | head -1)
echo "server pid ${pid:-none}" | tee "$OUT/pyspy.txt"
if [ -n "${pid:-}" ]; then
  python3 benchmarks/thread_cpu.py "$pid" --seconds "${SECONDS_CPU:-6}" --interval 0.5 --out "$OUT/thread_cpu.json" \
    | tee "$OUT/thread_cpu.txt"
fi
if [ -n "${pid:-}" ] && [ "$PYSPY" != none ]; then
  "$PYSPY" record -p "$pid" -r 250 -d 8 --threads -f raw -o "$OUT/pyspy_threads.txt" --nonblocking >> "$OUT/pyspy.txt" 2>&1
  "$PYSPY" record -p "$pid" -r 250 -d 6 --gil -f raw -o "$OUT/pyspy_gil.txt" --nonblocking >> "$OUT/pyspy.txt" 2>&1
fi
wait "$bench"
cat "$OUT/serve.txt" | tail -20
