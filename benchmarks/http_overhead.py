"""The serving overhead of one llmserve process, without a model: how many streamed tokens per second
the HTTP/SSE side and the engine loop can move when each engine step costs a fixed time.

A stand-in engine (no torch) emits one token per running sequence per step and sleeps `--step-ms`
per step (releasing the GIL, as a GPU step waiting on the device does). The real app, worker thread,
dispatcher and SSE formatting run unchanged under uvicorn on loopback; `llmserve bench` drives it.
With a 5 ms step and 256 streams the ideal is 51,200 tok/s; what is measured below that is overhead.

    python benchmarks/http_overhead.py --concurrency 256 --step-ms 5
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import uvicorn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from llmserve.app import create_app  # noqa: E402
from llmserve.bench import BenchOptions, run_bench  # noqa: E402
from llmserve.config import parse_config  # noqa: E402
from llmserve.engine.engine import SequenceOutput  # noqa: E402
from llmserve.engine.request import SamplingParams  # noqa: E402


class _Tokenizer:
    """Enough of a tokenizer for the API layer: one token per character."""

    chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

    def apply_chat_template(self, messages: list[dict], **_: object) -> str:
        return "".join(m["content"] for m in messages)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % 1000 for c in text] or [0]

    def decode(self, ids: list[int], **_: object) -> str:
        return "".join(chr(97 + i % 26) for i in ids)

    def __call__(self, texts: list[str], add_special_tokens: bool = True, **_: object) -> dict[str, list[list[int]]]:
        return {"input_ids": [self.encode(text, add_special_tokens) for text in texts]}


class StandInEngine:
    """The worker-facing interface of LLMEngine, with a sleep for the model step."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.tokenizer = _Tokenizer()
        self.vocab_size = 1000
        self.max_model_len = 1 << 20
        self.last_scheduled: list[int] = []
        self._seqs: dict[int, tuple[int, int, int]] = {}  # seq id -> (prompt len, max tokens, generated)

    @property
    def has_work(self) -> bool:
        return bool(self._seqs)

    def add(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self._seqs[seq_id] = (len(prompt_ids), params.max_tokens, 0)

    def abort(self, seq_id: int) -> SequenceOutput | None:
        entry = self._seqs.pop(seq_id, None)
        return None if entry is None else SequenceOutput(seq_id, "", [], [], "abort", entry[0], entry[2])

    def fail(self, seq_ids: list[int], message: str) -> list[SequenceOutput]:
        return []

    def step(self) -> list[SequenceOutput]:
        time.sleep(self.step_s)
        outputs = []
        self.last_scheduled = list(self._seqs)
        for seq_id, (num_prompt, max_tokens, done) in list(self._seqs.items()):
            done += 1
            finish = "length" if done >= max_tokens else None
            outputs.append(SequenceOutput(seq_id, "t", [7], [], finish, num_prompt, done))
            if finish:
                del self._seqs[seq_id]
            else:
                self._seqs[seq_id] = (num_prompt, max_tokens, done)
        return outputs


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds used so far by each named thread of this process (Linux)."""
    import psutil

    native = {t.native_id: t.name for t in threading.enumerate()}
    return {native.get(t.id, str(t.id)): t.user_time + t.system_time for t in psutil.Process().threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--step-ms", type=float, default=5.0)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--port", type=int, default=8077)
    args = parser.parse_args()
    config = parse_config({"server": {"port": args.port},
                           "workers": [{"model_path": "stand-in", "max_num_seqs": args.concurrency}]})
    app = create_app(config, engine_factory=lambda cfg, i: StandInEngine(args.step_ms / 1000))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="server")
    thread.start()
    while not server.started:
        time.sleep(0.05)
    time.sleep(0.5)
    before = _thread_cpu_s()
    report = run_bench(BenchOptions(base_url=f"http://127.0.0.1:{args.port}/v1", model="stand-in",
                                    endpoint="completions", num_prompts=args.concurrency * 2, input_len=16,
                                    output_len=args.output_len, max_concurrency=args.concurrency,
                                    show_progress=False))
    after = _thread_cpu_s()
    server.should_exit = True
    thread.join(10)
    m = report.metrics
    tokens = max(m.total_output_tokens, 1)
    for name in ("server", "worker-0"):
        print(f"{name} thread: {(after.get(name, 0) - before.get(name, 0)) / tokens * 1e6:.1f} us of CPU per token")
    ideal = args.concurrency * 1000 / args.step_ms
    print(f"concurrency {args.concurrency}, step {args.step_ms} ms: {m.output_tokens_per_s:,.0f} tok/s "
          f"({m.output_tokens_per_s / ideal:.0%} of the ideal {ideal:,.0f}), TPOT p50 {m.tpot.median_ms:.2f} ms, "
          f"failed {m.num_failed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
