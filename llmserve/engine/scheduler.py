"""Who runs in the next step: admission, chunked prefill under a token budget, preemption.

Running sequences go first, in arrival order (a decode costs one token of the budget, an
unfinished prefill continues with as many as the budget allows); then waiting sequences are
admitted while the budget, `max_num_seqs` and free cache blocks allow. When the cache runs
out, the most recently admitted running sequence is preempted: its blocks are freed and it
goes back to the front of the queue to be recomputed later (its prefix may still be cached).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from llmserve.engine.kv_cache import BlockPool
from llmserve.engine.request import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int


@dataclass(slots=True)
class ScheduledSeq:
    """A sequence and how many of its uncomputed tokens this step computes (never changed once made;
    not frozen: a frozen dataclass's constructor costs 2.5x, and one is made per sequence per step)."""

    seq: Sequence
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """True when this step reaches the sequence's last token, so a new token is sampled.
        (Valid until the step's tokens are counted as computed.)"""
        seq = self.seq
        return seq.num_computed_tokens + self.num_new_tokens == seq.num_tokens + seq.num_pending_tokens


class Scheduler:
    """Holds the waiting queue and the running batch of one engine."""

    def __init__(self, config: SchedulerConfig, pool: BlockPool) -> None:
        self.config = config
        self.pool = pool
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and free its cache blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.free(seq)

    def schedule(self) -> list[ScheduledSeq]:
        """Pick this step's sequences and token counts; allocates the cache blocks they need."""
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_uncomputed_tokens, budget)
            if num_new == 0:  # its last token is being computed in the step still in flight
                i += 1
            elif self._reserve(seq, num_new):
                scheduled.append(ScheduledSeq(seq, num_new))
                budget -= num_new
                i += 1
            else:
                preempted = True  # seq itself was preempted; the list shrank under i
        if not preempted:
            budget = self._admit(budget, scheduled)
        return scheduled

    def _reserve(self, seq: Sequence, num_new: int) -> bool:
        """Make room for `num_new` more tokens of `seq`, preempting later arrivals if needed."""
        target = seq.num_computed_tokens + num_new
        while not self.pool.ensure_capacity(seq, target):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _admit(self, budget: int, scheduled: list[ScheduledSeq]) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if not self.pool.allocate(seq):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            num_new = min(seq.num_uncomputed_tokens, budget)
            scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
        return budget

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.pool.free(seq)
        seq.num_pending_tokens = 0  # recomputed from its known tokens once readmitted
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
