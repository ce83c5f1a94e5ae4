"""The Triton attention kernels, run in a child pytest (natively on CUDA, else under the interpreter).

The cases live in `triton_cases.py`; see its docstring for why they need a process of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

CASES = Path(__file__).with_name("triton_cases.py")


def test_triton_kernels_match_the_reference() -> None:
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(CASES)],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=540,
    )
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-6000:] + result.stderr[-3000:]
