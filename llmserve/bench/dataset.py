"""Random prompts of controlled length: from token ids with a tokenizer, from words without."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from llmserve.bench.options import BenchError, BenchOptions

# Common English words, nearly all one token in BPE vocabularies, so a prompt of N words is
# roughly N tokens. Only used when no tokenizer is given (the report says lengths are approximate).
_WORDS = tuple(
    """the of and to in is was for on that with as by at from his he it an are were which this be or
    has had not first one their its new after but who they have her she two been other when there all
    during into school time may years more most only over city some world would where later up such
    used many can state about national out known university united then made system through group
    part since against team while both well under water house number around people three
    river county century between each them high american family film book music year game line
    south north east west small large early long great place name home light power road back
    station area local public every open field table window paper story plan voice model order""".split()
)

# How often a tokenizer prompt is re-decoded to converge on the requested token count.
_MAX_TOKEN_FIT_ROUNDS = 10


class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer that prompt building uses."""

    all_special_ids: list[int]

    def __len__(self) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Any, skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True)
class BenchPrompt:
    """One request's prompt text and lengths."""

    text: str
    num_prompt_tokens: int
    """Tokens in `text` by the tokenizer, or the word count when there is none."""
    num_output_tokens: int
    """`max_tokens` to ask for."""


def sample_lengths(mean_len: int, range_ratio: float, num: int, rng: np.random.Generator) -> list[int]:
    """`num` integers uniform in [floor(mean*(1-r)), ceil(mean*(1+r))], never below 1."""
    low = max(1, math.floor(mean_len * (1 - range_ratio)))
    high = max(low, math.ceil(mean_len * (1 + range_ratio)))
    return [int(n) for n in rng.integers(low, high + 1, size=num)]


def build_word_prompt(num_words: int, rng: np.random.Generator) -> str:
    """A space-separated string of `num_words` random common words."""
    indices = rng.integers(0, len(_WORDS), size=num_words)
    return " ".join(_WORDS[i] for i in indices)


def allowed_token_ids(tokenizer: Tokenizer) -> np.ndarray:
    """Every id of the vocabulary except special tokens (BOS, EOS, padding, ...)."""
    ids = np.arange(len(tokenizer))
    return np.setdiff1d(ids, np.asarray(tokenizer.all_special_ids, dtype=ids.dtype))


def build_token_prompt(
    tokenizer: Tokenizer, allowed_ids: np.ndarray, num_tokens: int, rng: np.random.Generator
) -> tuple[str, int]:
    """Decode random token ids to text, re-encode and trim or pad until it is `num_tokens` long.

    Decoding then encoding merges or splits tokens, so the text is checked again; returns the
    text and its real token count (equal to `num_tokens` unless the tokenizer never settles).
    """
    ids: list[int] = [int(i) for i in rng.choice(allowed_ids, size=num_tokens)]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for _ in range(_MAX_TOKEN_FIT_ROUNDS):
        encoded = list(tokenizer.encode(text, add_special_tokens=False))
        if len(encoded) == num_tokens:
            return text, num_tokens
        if len(encoded) > num_tokens:
            ids = encoded[:num_tokens]
        else:
            extra = rng.choice(allowed_ids, size=num_tokens - len(encoded))
            ids = encoded + [int(i) for i in extra]
        text = tokenizer.decode(ids, skip_special_tokens=True)
    return text, len(tokenizer.encode(text, add_special_tokens=False))


def load_tokenizer(path: str) -> Tokenizer:
    """Load a local Hugging Face tokenizer folder (transformers is imported only here)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a dependency
        raise BenchError("--tokenizer needs the transformers package") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot load tokenizer from {path!r}: {exc}") from exc
    return cast(Tokenizer, tokenizer)


def build_prompts(options: BenchOptions, tokenizer: Tokenizer | None = None) -> list[BenchPrompt]:
    """The run's prompts; loads `options.tokenizer` unless a tokenizer object is passed."""
    if tokenizer is None and options.tokenizer is not None:
        tokenizer = load_tokenizer(options.tokenizer)
    rng = np.random.default_rng(options.seed)
    input_lens = sample_lengths(options.input_len, options.range_ratio, options.num_prompts, rng)
    output_lens = sample_lengths(options.output_len, options.range_ratio, options.num_prompts, rng)
    if tokenizer is None:
        texts = [(build_word_prompt(n, rng), n) for n in input_lens]
    else:
        allowed = allowed_token_ids(tokenizer)
        texts = [build_token_prompt(tokenizer, allowed, n, rng) for n in input_lens]
    return [BenchPrompt(text, n_in, n_out) for (text, n_in), n_out in zip(texts, output_lens, strict=True)]


def mean_prompt_tokens(prompts: Sequence[BenchPrompt]) -> float:
    """Average prompt length in tokens (as counted when the prompts were built)."""
    return sum(p.num_prompt_tokens for p in prompts) / len(prompts) if prompts else 0.0
