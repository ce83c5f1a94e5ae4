"""Per-sequence grammar state and the batch's token mask: the engine's one hook into structured output.

Each step, for the rows whose request carries a grammar, the host fills a bitmask of the tokens
the grammar allows next (xgrammar: a few microseconds a row, see `llmserve/structured/__init__.py`),
copies it to the logits' device and unpacks it there; the sampler sets every other token's logit
to -inf before it picks. Rows without a grammar get all bits set, and a step where no row has a
grammar builds nothing at all (`token_mask` returns None after one pass over the rows' params).

A matcher catches up with its sequence's accepted tokens when the next mask is asked for, so the
engine needs no call in its postprocessing: the mask for a row is always that of the tokens the
host knows. That is why a grammar row's draw waits for its previous token's read-back (its forward
still runs ahead: `engine.py` `_draw_deferred`). The rows' masks are filled in one call of
xgrammar's batch matcher, which spreads them over threads outside the interpreter lock (a Python
loop of per-row fills held the lock ~16 us a row at a 128k vocabulary, in the way of the event loop).
When the grammar is complete only the stop tokens stay allowed, so the sequence ends with
finish_reason "stop" on the engine's usual end-of-sequence check.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from llmserve.engine.request import Sequence
from llmserve.engine.transfer import to_device
from llmserve.structured.compiler import GrammarCompiler

_BITS = 32  # xgrammar packs 32 tokens per int32 word


@dataclass
class _Matcher:
    """One sequence's grammar state and how many of its output tokens it has consumed."""

    seq: weakref.ref[Sequence]
    matcher: Any  # xgrammar.GrammarMatcher
    num_consumed: int = 0
    is_broken: bool = False  # a token the grammar refused reached it: only stop tokens from now on


class StructuredDecoding:
    """The grammar side of one engine: a compiler for its tokenizer and the live matchers."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: frozenset[int]) -> None:
        self.compiler = GrammarCompiler(tokenizer, vocab_size, stop_token_ids)
        self.vocab_size = vocab_size
        self._stop_ids = sorted(i for i in stop_token_ids if i < vocab_size)
        self._matchers: dict[int, _Matcher] = {}
        self._batch: Any = None  # xgrammar.BatchGrammarMatcher, made at the first mask

    @property
    def num_words(self) -> int:
        return (self.vocab_size + _BITS - 1) // _BITS

    @property
    def num_live(self) -> int:
        """Matchers held (sequences with a grammar that have sampled and are not yet collected)."""
        return len(self._matchers)

    def token_mask(self, seqs: list[Sequence], device: torch.device) -> torch.Tensor | None:
        """[B, V] bool on `device`: the tokens each row may sample; None when no row has a grammar."""
        bitmask = self.fill_bitmask(seqs)
        return None if bitmask is None else allowed_tokens(to_device(bitmask, device), self.vocab_size)

    def fill_bitmask(self, seqs: list[Sequence]) -> torch.Tensor | None:
        """The host's part of `token_mask`: [B, W] int32 on the CPU, bit j of word w set where row
        may sample token 32 * w + j; None when no row has a grammar."""
        rows = [row for row, seq in enumerate(seqs) if seq.params.grammar is not None]
        if self._matchers:
            self._collect()
        if not rows:
            return None
        bitmask = torch.full((len(seqs), self.num_words), -1, dtype=torch.int32)
        live_rows, live = [], []
        for row in rows:
            matcher = self._catch_up(seqs[row], bitmask, row)
            if matcher is not None:
                live_rows.append(row)
                live.append(matcher)
        if live:
            self._batch_matcher().batch_fill_next_token_bitmask(live, bitmask, live_rows)
        json_rows = [row for row in rows if seqs[row].params.grammar.forbids_control_bytes]  # type: ignore[union-attr]
        if json_rows:  # one op for all of them
            bitmask[json_rows] &= self.compiler.json_safe_words()
        return bitmask

    def _catch_up(self, seq: Sequence, bitmask: torch.Tensor, row: int) -> Any:
        """Feed the sequence's new tokens to its matcher; the matcher if its row's mask is still to
        fill, None when the row allows only the stop tokens (the grammar is complete or was broken),
        set here."""
        state = self._state(seq)
        for token_id in seq.output_ids[state.num_consumed:]:
            if not state.is_broken and not state.matcher.accept_token(token_id):
                state.is_broken = True
        state.num_consumed = len(seq.output_ids)
        if state.is_broken or state.matcher.is_terminated():
            bitmask[row] = 0
            for token_id in self._stop_ids:
                bitmask[row, token_id // _BITS] |= _bit(token_id % _BITS)
            return None
        return state.matcher

    def _batch_matcher(self) -> Any:
        if self._batch is None:
            import xgrammar

            self._batch = xgrammar.BatchGrammarMatcher()
        return self._batch

    def _state(self, seq: Sequence) -> _Matcher:
        state = self._matchers.get(seq.seq_id)
        if state is None or state.seq() is not seq:
            import xgrammar

            assert seq.params.grammar is not None
            compiled = self.compiler.compile(seq.params.grammar)
            state = self._matchers[seq.seq_id] = _Matcher(weakref.ref(seq), xgrammar.GrammarMatcher(compiled))
        return state

    def _collect(self) -> None:
        """Drop the matchers of sequences that finished or were dropped by the engine."""
        for seq_id in [i for i, m in self._matchers.items() if (s := m.seq()) is None or s.is_finished]:
            del self._matchers[seq_id]


def _bit(index: int) -> int:
    """Bit `index` of an int32 word as a Python int in int32's range (bit 31 is the sign)."""
    return -(2**31) if index == _BITS - 1 else 1 << index


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Unpack a token bitmask on its device. bitmask: [B, W] int32 (bit j of word w allows token
    32 * w + j). Returns [B, V] bool.

    Read as bytes (little-endian, as on every device torch runs on here: byte k of a word holds
    bits 8k..8k+7) and looked up in a 256 x 8 table: a quarter of the work of shifting each word
    32 times, which matters on the CPU with a 128k vocabulary.
    """
    device = bitmask.device
    table = ((torch.arange(256, device=device).unsqueeze(1) >> torch.arange(8, device=device)) & 1).bool()
    return table[bitmask.contiguous().view(torch.uint8).long()].flatten(1)[:, :vocab_size]  # [B, 4W, 8] -> [B, V]
