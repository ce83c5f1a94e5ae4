"""Tests of llmserve/bench/sse.py."""

from __future__ import annotations

from llmserve.bench.sse import DONE, SseDecoder, decode_lines


def test_events_split_on_blank_lines() -> None:
    lines = ['data: {"a": 1}', "", 'data: {"b": 2}', "", "data: [DONE]", ""]
    assert decode_lines(lines) == ['{"a": 1}', '{"b": 2}', DONE]


def test_comments_and_other_fields_are_skipped() -> None:
    lines = [": ping - 2024", "", "event: message", "id: 7", "retry: 100", "data: x", ""]
    assert decode_lines(lines) == ["x"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode_lines(["data: one", "data: two", ""]) == ["one\ntwo"]


def test_space_after_colon_is_optional_and_only_one_is_stripped() -> None:
    assert decode_lines(["data:x", "", "data:  y", ""]) == ["x", " y"]


def test_field_without_colon_is_empty_data() -> None:
    assert decode_lines(["data", ""]) == [""]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    decoder = SseDecoder()
    assert [decoder.feed(line) for line in ["", "", ": c", ""]] == [None, None, None, None]


def test_unterminated_last_event_is_flushed() -> None:
    decoder = SseDecoder()
    assert decoder.feed("data: [DONE]") is None
    assert decoder.flush() == DONE
    assert decoder.flush() is None
