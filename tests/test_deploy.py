"""The systemd unit in deploy/ is valid and runs the documented command."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "llmserve.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_runs_as_a_dedicated_user_and_restarts_on_failure() -> None:
    service = _unit()["Service"]
    assert service["User"] == "llmserve" and service["Restart"] == "on-failure"
    assert service["ExecStart"].endswith("llmserve run /etc/llmserve/config.toml")
    assert service["KillSignal"] == "SIGTERM"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    exe = Path(sys.executable).parent / "llmserve"
    unit = tmp_path / "llmserve.service"
    unit.write_text(UNIT.read_text().replace("/opt/llmserve/bin/llmserve", str(exe)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_systemd_waits_longer_than_the_example_configs_drain() -> None:
    """SIGKILL never cuts a drain: TimeoutStopSec > drain_grace + shutdown_timeout."""
    import tomllib

    from llmserve.config import parse_config

    server = parse_config(tomllib.loads((ROOT / "config.example.toml").read_text())).server
    timeout = int(_unit()["Service"]["TimeoutStopSec"])
    assert timeout > server.drain_grace + server.shutdown_timeout
