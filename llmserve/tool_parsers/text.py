"""Content text around tool calls: blank text between calls (a template's newlines) is not content."""

from __future__ import annotations


class BlankHold:
    """Holds trailing blank content text until it is known whether more content follows it: blank
    text right before a tool call, or at the end after calls, is dropped (it is layout)."""

    def __init__(self) -> None:
        self._held = ""

    def take(self, text: str, after_calls: bool, before_call: bool = False) -> str:
        """Add content `text`; return what is safe to send now."""
        text = self._held + text
        body = text.rstrip()
        self._held = "" if before_call else text[len(body):]
        return body

    def flush(self, after_calls: bool) -> str:
        held, self._held = self._held, ""
        return "" if after_calls else held


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that begins `tag` (0 if none)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
