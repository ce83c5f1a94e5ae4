"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmserve.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama model + tokenizer (preset "tiny", seed 0), built once per session (~2 s)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)
