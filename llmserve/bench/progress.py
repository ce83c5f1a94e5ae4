"""A minimal progress bar on stderr, so the benchmark adds no dependency."""

from __future__ import annotations

import sys
import time
from typing import TextIO

# Characters of the bar itself.
_BAR_WIDTH = 30


class ProgressBar:
    """Counts finished requests; draws `[####....] 12/64 3.1s` in place when enabled."""

    def __init__(self, total: int, is_enabled: bool, stream: TextIO | None = None) -> None:
        self.total = total
        self.num_done = 0
        self.is_enabled = is_enabled
        self._stream = stream if stream is not None else sys.stderr
        self._start_s = time.perf_counter()

    @staticmethod
    def should_show(is_requested: bool, stream: TextIO | None = None) -> bool:
        """Show the bar only when asked to and the stream is an interactive terminal."""
        target = stream if stream is not None else sys.stderr
        return is_requested and target.isatty()

    def update(self, num: int = 1) -> None:
        """Mark `num` more items finished and redraw."""
        self.num_done += num
        if self.is_enabled:
            self._stream.write("\r" + self.render())
            self._stream.flush()

    def render(self) -> str:
        """The bar's current text (without carriage return)."""
        fraction = self.num_done / self.total if self.total else 1.0
        filled = int(round(fraction * _BAR_WIDTH))
        elapsed_s = time.perf_counter() - self._start_s
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        return f"bench [{bar}] {self.num_done}/{self.total} {elapsed_s:.1f}s"

    def close(self) -> None:
        """End the bar's line so later output starts clean."""
        if self.is_enabled:
            self._stream.write("\n")
            self._stream.flush()
