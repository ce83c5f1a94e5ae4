"""gpt-oss harmony output read as it streams, with OpenAI's `openai-harmony` parser.

A harmony answer is a run of messages, each `<|channel|>NAME[ to=RECIPIENT][ <|constrain|>TYPE]
<|message|>BODY` ended by `<|end|>`, `<|call|>` or `<|return|>`, later ones opened by
`<|start|>assistant`. The markers are special tokens, so the parsers that read this name them in
`special_tokens` (the detokenizer then writes them into the text). Text outside any message
(a grammar-forced answer, or content another parser already took out of its message) is passed on
as it is. Each message is read by its own `StreamableParser`, fed the tokens of the text as it
becomes safe to encode (never a partial marker).

`openai-harmony` is an optional dependency (`pip install 'llmserve[harmony]'`); its encoding
needs the `o200k_base.tiktoken` vocabulary, downloaded once or found in `TIKTOKEN_ENCODINGS_BASE`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from llmserve.errors import ConfigError
from llmserve.tool_parsers.text import partial_suffix

START, CHANNEL = "<|start|>", "<|channel|>"
MARKERS = ("<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", "<|call|>", "<|return|>")
PACKAGE = "openai-harmony"


@functools.cache
def harmony_encoding() -> Any:
    """The gpt-oss encoding, loaded once per process (it is immutable; loading reads and hashes
    the 3.6 MB vocabulary, 0.15 s, after downloading it if it is not cached)."""
    try:
        import openai_harmony
    except ImportError as exc:
        raise ConfigError(f"the harmony parsers need the '{PACKAGE}' package: pip install {PACKAGE}") from exc
    try:
        return openai_harmony.load_harmony_encoding(openai_harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
    except openai_harmony.HarmonyError as exc:
        raise ConfigError(f"{PACKAGE} could not load the o200k_base vocabulary ({exc}); put o200k_base.tiktoken "
                          "in a folder named by TIKTOKEN_ENCODINGS_BASE") from exc


@dataclass
class Piece:
    """Part of the answer: `text` outside any message, or part of the message on `channel`
    (`recipient` set for a call; the first piece of each message is its header, text "")."""

    text: str
    channel: str | None = None
    recipient: str | None = None
    header: bool = False
    end: bool = False  # the message ended with this piece (its text is "")


class HarmonyMessages:
    """Splits a harmony answer into `Piece`s, incrementally."""

    def __init__(self) -> None:
        self._encoding = harmony_encoding()
        self._buffer = ""
        self._parser: Any = None  # the open message's StreamableParser
        self._opening = ""  # the open message's text until its header is read (given back if it is no header)
        self._in_body = False

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        pieces: list[Piece] = []
        while self._buffer:
            if self._parser is None and not self._outside(pieces):
                break
            if self._parser is not None and not self._inside(pieces, final=False):
                break
        return pieces

    def finish(self) -> list[Piece]:
        pieces: list[Piece] = []
        if self._parser is not None:
            self._inside(pieces, final=True)
            if self._parser is not None:  # ended without its end marker (stopped by the engine)
                pieces += [Piece("", end=True)] if self._in_body else [Piece(self._opening)]
        elif self._buffer:
            pieces.append(Piece(self._buffer))
        self._buffer, self._parser = "", None
        return pieces

    def _outside(self, pieces: list[Piece]) -> bool:
        """Text until a message opens; False when the rest must wait."""
        hits = [at for at in (self._buffer.find(START), self._buffer.find(CHANNEL)) if at >= 0]
        if not hits:
            cut = len(self._buffer) - max(partial_suffix(self._buffer, START), partial_suffix(self._buffer, CHANNEL))
            if cut:
                pieces.append(Piece(self._buffer[:cut]))
            self._buffer = self._buffer[cut:]
            return False
        at = min(hits)
        if at:
            pieces.append(Piece(self._buffer[:at]))
        self._buffer = self._buffer[at:]
        import openai_harmony

        # The prompt ends with `<|start|>assistant`, so the first message opens at its channel.
        role = None if self._buffer.startswith(START) else openai_harmony.Role.ASSISTANT
        self._parser = openai_harmony.StreamableParser(self._encoding, role=role)
        self._opening, self._in_body = "", False
        return True

    def _inside(self, pieces: list[Piece], final: bool) -> bool:
        """Feed the open message what is safe to encode; False when the rest must wait."""
        import openai_harmony

        held = 0 if final else max(partial_suffix(self._buffer, m) for m in MARKERS)
        safe, self._buffer = self._buffer[: len(self._buffer) - held], self._buffer[len(self._buffer) - held:]
        tokens = self._encoding.encode(safe, allowed_special="all")
        parser = self._parser
        for n, token in enumerate(tokens):
            try:
                parser.process(token)
            except openai_harmony.HarmonyError:  # not a harmony header after all: plain text
                if self._in_body:
                    raise
                pieces.append(Piece(self._opening + self._encoding.decode([token])))
                self._buffer = self._encoding.decode(tokens[n + 1:]) + self._buffer
                self._parser = None
                return True
            if not self._in_body:
                self._opening += self._encoding.decode([token])
                if parser.state == openai_harmony.StreamState.CONTENT:
                    self._in_body = True
                    pieces.append(Piece("", parser.current_channel, parser.current_recipient, header=True))
                continue
            if parser.state == openai_harmony.StreamState.EXPECT_START:  # the end marker
                pieces.append(Piece("", end=True))
                self._parser = None
                self._buffer = self._encoding.decode(tokens[n + 1:]) + self._buffer
                return True
            if parser.last_content_delta:
                pieces.append(Piece(parser.last_content_delta, parser.current_channel, parser.current_recipient))
        return False


def check_harmony(tool_parser: str, reasoning_parser: str, chat_template: str, path: str) -> None:
    """Start-up check of a worker whose parsers are harmony (named, or chosen from a template that
    writes channels): the package and its vocabulary are loaded now, or the worker is refused."""
    chosen_by_template = CHANNEL in chat_template and not (tool_parser and reasoning_parser)
    if "harmony" in (tool_parser, reasoning_parser) or chosen_by_template:
        try:
            harmony_encoding()
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
