"""JSON answers of millions of values built, and big lists freed, without stalling other streams.

Work done in a worker thread still needs the GIL, and one C call over a million values holds it
for as long as it runs: `json.dumps` of 1.8M token ids for about 150 ms, freeing their list for
15-40 ms, while the event loop and the engine threads wait (every stream stalls). These helpers
work a slice at a time, each slice about 0.2 ms, and after each slice let the GIL go for
`PAUSE_S`: a thread waiting for it takes it at once, whatever the interpreter's switch interval,
and the engine, whose every torch call gives the GIL up and takes it back, is not slowed by a
busy neighbour taking it each time (the worker holds it a fraction of the time instead of half).
On the event loop itself (small bodies are handled there) nothing pauses.

The JSON is the text `json.dumps(..., separators=(",", ":"))` gives for the whole value: arrays are
joined from the arrays of their slices, strings from the escapes of their slices (JSON escapes
each character on its own).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

INTS_PER_SLICE = 4_096
"""Integers encoded per slice (about 0.2 ms)."""
OBJECTS_PER_SLICE = 512
"""Small JSON objects encoded per slice (about 0.25 ms)."""
CHARS_PER_SLICE = 131_072
"""Characters of a string escaped per slice (about 0.25 ms)."""
ITEMS_PER_RELEASE = 16_384
"""List items freed per slice (0.05-0.3 ms)."""
PAUSE_S = 0.0005
"""How long the GIL is let go after each slice (off the event loop)."""


def array_pieces(values: Sequence[Any], slice_len: int = INTS_PER_SLICE, ensure_ascii: bool = True) -> list[bytes]:
    """`values` as JSON (UTF-8) in pieces: `b"".join(pieces)` is the array."""
    if not values:
        return [b"[]"]
    pause_s = _pause_s()
    pieces = [b"["]
    for start in range(0, len(values), slice_len):
        if start:
            pieces.append(b",")
            time.sleep(pause_s)
        text = json.dumps(values[start:start + slice_len], separators=(",", ":"), ensure_ascii=ensure_ascii)
        pieces.append(text[1:-1].encode())
    pieces.append(b"]")
    return pieces


def string_pieces(text: str, slice_len: int = CHARS_PER_SLICE) -> list[bytes]:
    """`text` as a JSON string literal (UTF-8, non-ASCII characters kept) in pieces."""
    pause_s = _pause_s()
    pieces = [b'"']
    for start in range(0, len(text), slice_len):
        if start:
            time.sleep(pause_s)
        pieces.append(json.dumps(text[start:start + slice_len], ensure_ascii=False)[1:-1].encode())
    pieces.append(b'"')
    return pieces


def release(values: list[Any], slice_len: int = ITEMS_PER_RELEASE) -> None:
    """Empty `values` from its end a slice at a time: its items are freed here, in pieces, rather
    than all at once wherever the last reference to the list goes (perhaps the event loop)."""
    pause_s = _pause_s()
    while values:
        del values[-slice_len:]
        if values:
            time.sleep(pause_s)


def pause() -> None:
    """Let the GIL go for `PAUSE_S` between two slices of work in a worker thread (not on the loop)."""
    time.sleep(_pause_s())


def _pause_s() -> float:
    """`PAUSE_S` in a worker thread; 0 on the event loop (sleeping there would stall it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return PAUSE_S
    return 0.0
