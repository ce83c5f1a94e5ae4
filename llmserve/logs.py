"""Log lines a client cannot forge: control characters in every logged field are escaped.

Request paths, header values, model names and prompts reach log lines; a raw ESC or newline in
one of them would recolour a terminal or fake a log line. `install_log_escaping()` wraps the
process's log-record factory so that each record's message, once its arguments are filled in, and
its formatted traceback carry control characters as `\\xNN` escapes. It wraps once per process
(later calls find it in place) and applies to every logger and handler, uvicorn's included.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

# C0 controls, DEL and C1 controls (ANSI's 8-bit CSI is \x9b), and Unicode's line separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str, keep_newlines: bool = False) -> str:
    """`text` with control characters written as escapes (`\\x1b`, `\\n`, `\\u2028`)."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    return ascii(match.group())[1:-1]


class _EscapingFactory:
    """A log-record factory that escapes what the wrapped factory's records would print."""

    def __init__(self, wrapped: Callable[..., logging.LogRecord]) -> None:
        self.wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.wrapped(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it for logging's own error report
            return record
        record.msg, record.args = escape_control(message), None
        if record.exc_info and not record.exc_text:
            # A traceback's lines are ours; the exception messages inside may hold client text.
            record.exc_text = escape_control(logging.Formatter().formatException(record.exc_info),
                                             keep_newlines=True)
        return record


def install_log_escaping() -> None:
    """Escape control characters in every log record of this process from now on (idempotent)."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _EscapingFactory):
        logging.setLogRecordFactory(_EscapingFactory(factory))
