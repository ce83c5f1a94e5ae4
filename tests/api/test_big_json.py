"""big_json: the pieces join to exactly what json.dumps gives for the whole value."""

from __future__ import annotations

import json
import random

from llmserve.api.big_json import array_pieces, release, string_pieces


def _dumps(value: object, ensure_ascii: bool = True) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=ensure_ascii).encode()


def test_arrays_equal_json_dumps() -> None:
    ids = [random.Random(0).randrange(0, 200_000) for _ in range(20_001)]
    for values, slice_len in [([], 3), ([7], 3), (ids[:6], 3), (ids[:7], 3), (ids, 8192)]:
        assert b"".join(array_pieces(values, slice_len)) == _dumps(values)
    objects = [{"fits": i % 2 == 0, "tokenCount": i, "note": "é\n\"x\""} for i in range(1_000)]
    assert b"".join(array_pieces(objects, 7)) == _dumps(objects)
    assert b"".join(array_pieces(objects, 7, ensure_ascii=False)) == _dumps(objects, ensure_ascii=False)


def test_strings_equal_json_dumps() -> None:
    text = "plain \"quoted\" back\\slash\n\ttab \x00\x1f é中🙂 </script> " * 50
    for slice_len in (1, 2, 7, 262_144):
        assert b"".join(string_pieces(text, slice_len)) == _dumps(text, ensure_ascii=False)
    assert b"".join(string_pieces("")) == b'""'


def test_release_empties_the_list_in_place() -> None:
    values = list(range(100_003))
    alias = values
    release(values, 1_000)
    assert alias == []
