"""Incremental detokenisation and stop strings for one sequence.

Text is only released once it is final: an incomplete UTF-8 character (the tokenizer's
replacement character at the end of a partial decode) waits for the next token, and the last
`len(longest stop string) - 1` characters wait until they can no longer start a stop string.
So streamed deltas always concatenate to the non-streamed text.

Most tokens add the same text whatever precedes them (a byte-level BPE token that is whole UTF-8, a
metaspace token once a word came before it): `TokenTexts`, one per engine, learns which ones do,
once per token id, and the text they add. A sequence whose text so far ends on a whole character
takes such a token's text from it (a dictionary lookup) instead of one Rust call per token, the
largest piece of a decode step's per-sequence host work; any other token goes through the stream,
re-primed with the last few ids after a run of looked-up ones.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from tokenizers.decoders import DecodeStream

# Prompt tokens kept as left context so tokenizers that mark word starts (SentencePiece)
# decode the first generated token with the right spacing.
_CONTEXT_TOKENS = 5


def _rust_backend(tokenizer: Any) -> Any:
    """The Rust tokenizer where decoding straight from it gives `tokenizer.decode`'s text (no
    clean-up of tokenization spaces); None otherwise."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    return backend


def _decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """`decode(ids, skip_special_tokens=True)`, straight from the Rust tokenizer where it gives the
    same text: a few microseconds instead of tens per call, and it runs for every generated token."""
    backend = _rust_backend(tokenizer)
    return partial((tokenizer if backend is None else backend).decode, skip_special_tokens=True)


def _skipped_ids(tokenizer: Any) -> frozenset[int]:
    """Ids every decode here drops (added tokens flagged special: `skip_special_tokens=True`)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return frozenset(i for i, token in added.items() if getattr(token, "special", False))


def _rust_stream(tokenizer: Any, context: list[int]) -> tuple[Any, DecodeStream] | None:
    """The Rust tokenizer and a `DecodeStream` primed with `context`, where the stream gives the
    same text as `_decoder` (one call per token instead of two decodes): None otherwise."""
    backend = _rust_backend(tokenizer)
    if backend is None:
        return None
    try:
        return backend, DecodeStream(ids=context, skip_special_tokens=True)
    except TypeError:  # tokenizers without a primed stream
        return None


_ANCHOR_TEXTS = ("a", "7", "\n")
"""Text before a token when measuring what it adds: a letter, a digit, a line break."""


class TokenTexts:
    """The text each token adds after any whole-character text, for tokens whose text does not depend
    on what precedes it; None for the others (partial UTF-8, special, or context-dependent spacing).

    A token's text is measured once, at its first use: decoded after each anchor (a letter, a digit,
    a line break), it must add the same non-empty text with no replacement character every time.
    Only for tokenizers the Rust stream serves (no clean-up of tokenization spaces).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._decode = _decoder(tokenizer)
        self._cache: dict[int, str | None] = {}
        self._anchors = _anchors(tokenizer, self._decode) if _rust_backend(tokenizer) is not None else ()

    def get(self, token_id: int) -> str | None:
        try:
            return self._cache[token_id]
        except KeyError:
            text = self._cache[token_id] = self._measure(token_id)
            return text

    def _measure(self, token_id: int) -> str | None:
        added: set[str] = set()
        for anchor in self._anchors:
            before = self._decode([anchor])
            both = self._decode([anchor, token_id])
            if not both.startswith(before):
                return None
            added.add(both[len(before):])
        if len(added) != 1:
            return None
        text = added.pop()
        return text if text and "\ufffd" not in text else None


def _anchors(tokenizer: Any, decode: Callable[[list[int]], str]) -> tuple[int, ...]:
    """One token id per anchor text (its last token) that decodes to text of its own; at least two."""
    ids = []
    for text in _ANCHOR_TEXTS:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if encoded and decode([encoded[-1]]) and encoded[-1] not in ids:
            ids.append(encoded[-1])
    return tuple(ids) if len(ids) >= 2 else ()


class IncrementalDetokenizer:
    """Turns generated token ids into text deltas, honouring stop strings.

    Fast tokenizers decode through the Rust `DecodeStream`; others (and a stream that fails on
    some token) through two Python-side decodes per token with the same prefix/read offsets.
    Special tokens, which every decode here skips, never enter the window: with metaspace decoders
    (Llama 2, Mistral) a window starting at one would cost the next word its leading space.
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: tuple[str, ...],
                 special_text_ids: tuple[int, ...] = (), texts: TokenTexts | None = None) -> None:
        self._decode = _decoder(tokenizer)
        self._skipped = _skipped_ids(tokenizer)
        # Special tokens a parser reads (Mistral's [TOOL_CALLS]): their text is appended as it is,
        # outside the decode window, like every special token kept out of it.
        self._special_text = {i: str(tokenizer.convert_ids_to_tokens(i)) for i in special_text_ids}
        self._ids = [i for i in prompt_ids[-4 * _CONTEXT_TOKENS:] if i not in self._skipped][-_CONTEXT_TOKENS:]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._rust = _rust_stream(tokenizer, self._ids)
        self._texts = texts if self._rust is not None else None
        self._is_whole = True  # the text so far ends on a whole character (no bytes pending)
        self._stream_behind = False  # tokens were looked up since the stream's last step
        self._stop = tuple(s for s in stop if s)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._unreleased = ""  # decoded, not yet handed out (the stop strings' hold-back included)
        self.stopped = False

    def push(self, token_id: int) -> None:
        """Add one generated token; sets `stopped` when a stop string appears."""
        if token_id in self._special_text:
            self._append(self._special_text[token_id])
            return
        if token_id in self._skipped:
            return  # no text of its own
        self._ids.append(token_id)
        if self._texts is not None and self._is_whole and len(self._ids) > 1:
            text = self._texts.get(token_id)
            if text is not None:
                self._prefix_offset = self._read_offset
                self._read_offset = len(self._ids)
                self._stream_behind = True
                self._append(text)
                return
        if self._rust is not None:
            backend, stream = self._rust
            if self._stream_behind:  # primed again with the ids before this one
                stream = DecodeStream(ids=self._ids[-1 - _CONTEXT_TOKENS:-1], skip_special_tokens=True)
                self._rust = (backend, stream)
                self._stream_behind = False
            try:
                delta = stream.step(backend, token_id)
            except Exception:  # noqa: BLE001 - e.g. a prefix the new text no longer starts with
                self._rust = None  # this and later tokens go the Python way
                self._texts = None
            else:
                self._is_whole = delta is not None
                if delta is not None:
                    self._prefix_offset = self._read_offset
                    self._read_offset = len(self._ids)
                    if delta:
                        self._append(delta)
                return
        window = self._decode(self._ids[self._prefix_offset:])
        self._is_whole = not window.endswith("\ufffd")
        if not self._is_whole:
            return  # an incomplete character: wait for the bytes that finish it
        before = self._decode(self._ids[self._prefix_offset:self._read_offset])
        delta = window[len(before):]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        if delta:
            self._append(delta)

    def _append(self, delta: str) -> None:
        # Only the unreleased text is kept: released text never grows a per-token copy, and a stop
        # string completed by this delta starts in the held-back tail, which is never released early.
        if not self._stop:
            self._unreleased += delta
            return
        start = max(0, len(self._unreleased) - self._holdback)
        self._unreleased += delta
        hits = [at for at in (self._unreleased.find(s, start) for s in self._stop) if at >= 0]
        if hits:
            self._unreleased = self._unreleased[: min(hits)]
            self.stopped = True

    def release(self, is_final: bool) -> str:
        """The text that became final since the last call."""
        pending = self._unreleased
        end = len(pending) if is_final or self.stopped else len(pending) - self._holdback
        if end <= 0:
            return ""
        self._unreleased = pending[end:]
        return pending[:end]
