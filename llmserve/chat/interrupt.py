"""Ctrl-C while an answer streams: stop that answer at a safe point, keep the session.

The first Ctrl-C only raises a flag, checked between two text deltas, so the engine is never
interrupted inside a step (its cache and scheduler stay consistent). A second Ctrl-C raises
KeyboardInterrupt at once, for a stream that is stuck waiting.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class InterruptGuard:
    """A context manager that turns SIGINT into `is_set` while it is active (main thread only)."""

    def __init__(self) -> None:
        self.is_set = False
        self._previous: Any = None
        self._is_installed = False

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._is_installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._is_installed:
            signal.signal(signal.SIGINT, self._previous)
            self._is_installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.is_set:
            raise KeyboardInterrupt
        self.is_set = True
