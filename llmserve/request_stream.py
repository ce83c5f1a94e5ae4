"""One request's stream of outputs, from the worker's routing on the event loop to the API handler.

The engine thread's step outputs reach the event loop in one call per step (`Worker._route`), which
puts each into its request's stream; the handler iterates the stream. What queued up while the
handler was busy comes merged per choice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from llmserve.engine.engine import SequenceOutput


class RequestStream:
    """The outputs of one request's choices, as (choice index, output) pairs in arrival order."""

    def __init__(self, seq_ids: list[int], request_id: str = "") -> None:
        self.seq_ids = seq_ids
        self.request_id = request_id
        self.index = {seq_id: i for i, seq_id in enumerate(seq_ids)}
        self.unfinished = set(seq_ids)
        # Outputs not yet taken by the consumer, and the future it waits on while there are none
        # (lighter than an asyncio.Queue: this runs for every token of every stream).
        self._pending: list[SequenceOutput] = []
        self._waiter: asyncio.Future[None] | None = None
        # Bookkeeping of the routing side (metrics and the end-of-request log line).
        self.submitted_s = time.monotonic()
        self.first_token_s: float | None = None
        self.last_event_s: dict[int, float] = {}
        self.finished_outputs: list[SequenceOutput] = []
        self.prompt_ids: list[list[int]] = []  # per choice, as submitted

    @property
    def is_finished(self) -> bool:
        return not self.unfinished

    def put(self, output: SequenceOutput) -> None:
        """Hand an output to the consumer (event loop side)."""
        self._pending.append(output)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aiter__(self) -> AsyncIterator[tuple[int, SequenceOutput]]:
        """Outputs in order; whatever queued up while the consumer was busy comes merged per choice,
        so a slow client gets fewer, larger chunks instead of falling further behind."""
        while self.unfinished:
            if not self._pending:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            outputs, self._pending = self._pending, []
            merged: dict[int, SequenceOutput] = {}
            for output in outputs:
                previous = merged.get(output.seq_id)
                merged[output.seq_id] = output if previous is None else _merge(previous, output)
            for seq_id, out in merged.items():
                if out.finish_reason is not None:
                    self.unfinished.discard(seq_id)
                yield self.index[seq_id], out


def _merge(first: SequenceOutput, second: SequenceOutput) -> SequenceOutput:
    """Two consecutive outputs of one sequence as one."""
    second.text = first.text + second.text
    second.token_ids = first.token_ids + second.token_ids
    second.logprobs = first.logprobs + second.logprobs
    second.prompt_logprobs = first.prompt_logprobs or second.prompt_logprobs
    return second
