"""A sequence's state inside the engine: sampling parameters, status, tokens and cache blocks."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llmserve.structured.spec import GrammarSpec


class SequenceStatus(enum.Enum):
    """Where a sequence is in its life; the finished ones map to OpenAI finish reasons."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"

    @property
    def is_finished(self) -> bool:
        return self not in (SequenceStatus.WAITING, SequenceStatus.RUNNING)

    @property
    def finish_reason(self) -> str | None:
        """The OpenAI `finish_reason` of a finished sequence, None while it runs."""
        return self.value if self.is_finished else None


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop; validated at the HTTP edge."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None = no logprobs; k = the sampled token's plus the top k
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    prompt_logprobs: int | None = None  # logprobs (and top k) of every prompt token after the first
    grammar: GrammarSpec | None = None  # the output's constraint (structured output), None = free text
    special_text_ids: tuple[int, ...] = ()  # special tokens written into the text (a tool parser's markers)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    @property
    def takes_argmax(self) -> bool:
        """Whether the next token is the raw logits' argmax: greedy, no penalties, no bias, no grammar."""
        return self.is_greedy and not self.has_penalties and not self.logit_bias and self.grammar is None


@dataclass
class TokenLogprob:
    """The log-probability of one generated token and the top alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def check_prompt(prompt_ids: list[int], vocab_size: int, max_model_len: int) -> None:
    """Raise ValueError unless the model can embed every token and the context holds the prompt
    (checked when a sequence is added: one out-of-range id would fail the whole batch's forward)."""
    if not 1 <= len(prompt_ids) <= max_model_len:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; 1 to {max_model_len} fit")
    if not all(type(t) is int for t in prompt_ids) or not 0 <= min(prompt_ids) <= max(prompt_ids) < vocab_size:
        raise ValueError(f"prompt token ids must be integers in [0, {vocab_size})")


@dataclass
class Sequence:
    """One generated continuation of a prompt: the engine's unit of scheduling."""

    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    status: SequenceStatus = SequenceStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at admission
    num_hashed_blocks: int = 0  # leading blocks of block_table already registered in the prefix cache
    # Tokens sampled on the device whose ids the host has not read yet (0 or 1): set while the
    # engine schedules the next step ahead of reading the current one (see `engine.py`).
    num_pending_tokens: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens + self.num_pending_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def token_at(self, position: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[position] if position < n else self.output_ids[position - n]
