"""JSON answers of millions of values built, and big request objects freed, without stalling streams.

Work done in a worker thread still holds the GIL, and one C call over a million values holds it
for as long as it runs: `json.dumps` of 1.8M token ids for about 150 ms, freeing their list for
15-40 ms. Meanwhile the event loop and the engine threads wait, and every stream stalls. These
helpers work a slice at a time (each slice well under a millisecond) and let the GIL go between
slices (`time.sleep(0)` releases it, so the hand-over does not wait for the interpreter's switch
interval).

The JSON is the same text `json.dumps(..., separators=(",", ":"))` gives for the whole value:
arrays are joined from the arrays of their slices, and strings from the escapes of their slices
(JSON escapes each character on its own).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

INTS_PER_SLICE = 8_192
"""Integers encoded, or list items freed, per slice (about 0.5 ms of GIL)."""
OBJECTS_PER_SLICE = 512
"""Small JSON objects encoded per slice (about 0.5 ms of GIL)."""
CHARS_PER_SLICE = 262_144
"""Characters of a string escaped per slice (about 0.5 ms of GIL)."""


def let_go() -> None:
    """Release the GIL so that a thread waiting for it (the event loop, an engine) takes it now."""
    time.sleep(0)


def array_pieces(values: Sequence[Any], slice_len: int = INTS_PER_SLICE, ensure_ascii: bool = True) -> list[bytes]:
    """`values` as JSON (UTF-8) in pieces: `b"".join(pieces)` is the array."""
    if not values:
        return [b"[]"]
    pieces = [b"["]
    for start in range(0, len(values), slice_len):
        if start:
            pieces.append(b",")
            let_go()
        text = json.dumps(values[start:start + slice_len], separators=(",", ":"), ensure_ascii=ensure_ascii)
        pieces.append(text[1:-1].encode())
    pieces.append(b"]")
    return pieces


def string_pieces(text: str, slice_len: int = CHARS_PER_SLICE) -> list[bytes]:
    """`text` as a JSON string literal (UTF-8, non-ASCII characters kept) in pieces."""
    pieces = [b'"']
    for start in range(0, len(text), slice_len):
        if start:
            let_go()
        pieces.append(json.dumps(text[start:start + slice_len], ensure_ascii=False)[1:-1].encode())
    pieces.append(b'"')
    return pieces


def release(values: list[Any], slice_len: int = INTS_PER_SLICE) -> None:
    """Empty `values` from its end a slice at a time: its items are freed here, in pieces, rather
    than all at once wherever the last reference to the list goes (perhaps the event loop)."""
    while values:
        del values[-slice_len:]
        let_go()
