"""Server-sent events: turn `text/event-stream` lines into event payloads.

Only the `data` field matters to an OpenAI stream; comments (`: ping`) and the
`event`, `id` and `retry` fields are skipped. An event is dispatched on a blank line.
"""

from __future__ import annotations

# Payload that ends an OpenAI stream.
DONE = "[DONE]"


class SseDecoder:
    """Incremental decoder: feed it lines (without newline), get each event's data back."""

    def __init__(self) -> None:
        self._data_lines: list[str] = []

    def feed(self, line: str) -> str | None:
        """Consume one line; return the event's data when this line completes an event."""
        if line == "":
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data_lines.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """Dispatch what has been buffered (end of event or of stream); None when empty."""
        if not self._data_lines:
            return None
        data = "\n".join(self._data_lines)
        self._data_lines = []
        return data


def decode_lines(lines: list[str]) -> list[str]:
    """Every event payload in a complete list of lines (for tests and offline parsing)."""
    decoder = SseDecoder()
    events = [data for line in lines if (data := decoder.feed(line)) is not None]
    tail = decoder.flush()
    return events + ([tail] if tail is not None else [])
