"""The training text for the tiny tokenizer: Python's own standard library sources.

Every Python install ships these files, so the corpus needs no network and no data files. The
files are read in a fixed (sorted) order and cut at a byte budget, so one Python install always
yields the same corpus, and so the same tokenizer.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

# Folders left out: third-party code (differs per environment), test suites (odd data, huge) and
# the codec tables under encodings/ (thousands of `'\x..'` escapes that would crowd the vocabulary).
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings"})


def stdlib_dir() -> Path:
    """The directory holding the standard library's pure-Python modules."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files(root: Path | None = None) -> list[Path]:
    """All `*.py` files under the stdlib directory, sorted by their relative POSIX path."""
    root = stdlib_dir() if root is None else root
    files = [
        path
        for path in root.rglob("*.py")
        if not _SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1])
    ]
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def read_corpus(max_bytes: int, root: Path | None = None) -> list[str]:
    """Whole stdlib source files, in sorted order, until `max_bytes` of UTF-8 text are collected.

    The last file is cut so that the total is exactly `max_bytes` (or less when the library is
    smaller). Undecodable bytes are replaced, so the text is always valid.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes = {max_bytes}: must be positive")
    texts: list[str] = []
    num_bytes_left = max_bytes
    for path in stdlib_source_files(root):
        data = path.read_bytes()[:num_bytes_left]
        texts.append(data.decode("utf-8", errors="replace"))
        num_bytes_left -= len(data)
        if num_bytes_left <= 0:
            break
    if not texts:
        raise FileNotFoundError(f"no Python sources found under {root or stdlib_dir()}")
    return texts
