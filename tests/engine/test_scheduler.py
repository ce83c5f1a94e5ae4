"""Scheduler: budgeted chunked prefill, admission limits and preemption by recomputation."""

from __future__ import annotations

from llmserve.engine.kv_cache import BlockPool
from llmserve.engine.request import SamplingParams, Sequence, SequenceStatus
from llmserve.engine.scheduler import Scheduler, SchedulerConfig


def _scheduler(num_blocks: int = 64, max_seqs: int = 8, budget: int = 32, block_size: int = 4) -> Scheduler:
    return Scheduler(SchedulerConfig(max_seqs, budget), BlockPool(num_blocks, block_size))


def _seq(seq_id: int, length: int) -> Sequence:
    return Sequence(seq_id, list(range(100 * seq_id, 100 * seq_id + length)), SamplingParams())


def _complete(scheduled: list) -> None:
    """Pretend the step ran: computed tokens advance, sampling rows get a token."""
    for item in scheduled:
        sampled = item.samples
        item.seq.num_computed_tokens += item.num_new_tokens
        if sampled:
            item.seq.output_ids.append(7)


def test_long_prompt_is_prefilled_in_chunks() -> None:
    sched = _scheduler(budget=16)
    seq = _seq(1, 40)
    sched.add(seq)
    sizes = []
    while seq.num_computed_tokens < 40:
        step = sched.schedule()
        sizes.append((step[0].num_new_tokens, step[0].samples))
        _complete(step)
    assert sizes == [(16, False), (16, False), (8, True)]
    assert seq.num_output_tokens == 1


def test_running_decodes_come_before_new_prefills() -> None:
    sched = _scheduler(budget=10)
    first = _seq(1, 4)
    sched.add(first)
    _complete(sched.schedule())
    second = _seq(2, 30)
    sched.add(second)
    step = sched.schedule()
    assert [(s.seq.seq_id, s.num_new_tokens) for s in step] == [(1, 1), (2, 9)]


def test_max_num_seqs_caps_the_running_batch() -> None:
    sched = _scheduler(max_seqs=2, budget=100)
    for i in range(1, 4):
        sched.add(_seq(i, 3))
    step = sched.schedule()
    assert [s.seq.seq_id for s in step] == [1, 2]
    assert len(sched.waiting) == 1


def test_preemption_frees_the_latest_and_requeues_it_first() -> None:
    sched = _scheduler(num_blocks=4, budget=100, block_size=4)
    a, b = _seq(1, 8), _seq(2, 8)
    sched.add(a)
    sched.add(b)
    _complete(sched.schedule())  # both prefilled: 4 blocks used, both now need a 3rd block
    step = sched.schedule()
    assert [s.seq.seq_id for s in step] == [1]
    assert b.status is SequenceStatus.WAITING and sched.waiting[0] is b
    assert b.block_table == [] and b.num_computed_tokens == 0
    assert sched.num_preemptions == 1


def test_remove_frees_blocks() -> None:
    sched = _scheduler()
    seq = _seq(1, 10)
    sched.add(seq)
    sched.schedule()
    free_before = sched.pool.num_free_blocks
    sched.remove(seq)
    assert sched.pool.num_free_blocks == free_before + 3
    assert sched.running == []
