"""Tests for llmserve.embedding.pooling: spec reading, model detection, pooling arithmetic."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from llmserve.embedding.pooling import (
    POOLING_MODES,
    PoolingMode,
    PoolingSpec,
    cls_pool,
    detect_embedding_model,
    last_token_pool,
    max_pool,
    mean_pool,
    mean_sqrt_len_pool,
    parse_pooling_config,
    pool,
    read_pooling_spec,
    weighted_mean_pool,
)

# hidden [2, 3, 2]; row 0 is right-padded (last position is padding), row 1 is full.
HIDDEN = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        [[1.0, 0.0], [0.0, 5.0], [2.0, 2.0]],
    ],
    dtype=torch.float64,
)
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
# Same tokens as row 0, left-padded: [pad, t0, t1].
LEFT_HIDDEN = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)
LEFT_MASK = torch.tensor([[0, 1, 1]])

EXPECTED: dict[str, list[list[float]]] = {
    "mean": [[2.0, 3.0], [1.0, 7 / 3]],
    "mean_sqrt_len_tokens": [[4 / math.sqrt(2), 6 / math.sqrt(2)], [3 / math.sqrt(3), 7 / math.sqrt(3)]],
    "weightedmean": [[7 / 3, 10 / 3], [7 / 6, 16 / 6]],
    "cls": [[1.0, 2.0], [1.0, 0.0]],
    "lasttoken": [[3.0, 4.0], [2.0, 2.0]],
    "max": [[3.0, 4.0], [2.0, 5.0]],
}
POOL_FUNCTIONS = {
    "mean": mean_pool,
    "mean_sqrt_len_tokens": mean_sqrt_len_pool,
    "weightedmean": weighted_mean_pool,
    "cls": cls_pool,
    "lasttoken": last_token_pool,
    "max": max_pool,
}


def _exact(actual: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pool_functions_exact_values(mode: str) -> None:
    _exact(POOL_FUNCTIONS[mode](HIDDEN, MASK), EXPECTED[mode])


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_left_padding_gives_same_result_as_right_padding(mode: str) -> None:
    _exact(POOL_FUNCTIONS[mode](LEFT_HIDDEN, LEFT_MASK), EXPECTED[mode][:1])


def test_pool_dispatches_and_normalizes() -> None:
    _exact(pool(HIDDEN, MASK, PoolingSpec("lasttoken", normalize=True)), [[0.6, 0.8], [0.5**0.5, 0.5**0.5]])
    _exact(pool(HIDDEN, MASK, PoolingSpec("max", normalize=False)), EXPECTED["max"])


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_matches_sentence_transformers_pooling(mode: PoolingMode) -> None:
    from sentence_transformers.sentence_transformer.modules import Pooling

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 7, 5, generator=generator)  # [B, L, D]
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 6 + [0], [1] + [0] * 6])
    reference = Pooling(embedding_dimension=5, pooling_mode=mode)
    expected = reference({"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(pool(hidden, mask, PoolingSpec(mode, normalize=False)), expected)


# ---------------------------------------------------------------- reading folders


def _write(folder: Path, name: str, content: Any) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")


def _modules(*kinds: str) -> list[dict[str, Any]]:
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize", "Dense": "2_Dense"}
    return [
        {"idx": i, "name": str(i), "path": paths[k], "type": f"sentence_transformers.models.{k}"}
        for i, k in enumerate(kinds)
    ]


def test_minilm_folder_spec(minilm_dir: Path) -> None:
    assert read_pooling_spec(minilm_dir) == PoolingSpec(mode="mean", normalize=True)
    assert detect_embedding_model(minilm_dir)


def test_legacy_cls_without_normalize(tmp_path: Path) -> None:
    _write(tmp_path, "modules.json", _modules("Transformer", "Pooling"))
    _write(
        tmp_path, "1_Pooling/config.json", {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    )
    assert read_pooling_spec(tmp_path) == PoolingSpec(mode="cls", normalize=False)


def test_new_style_lasttoken_with_include_prompt_ignored(tmp_path: Path) -> None:
    _write(tmp_path, "modules.json", _modules("Transformer", "Pooling", "Normalize"))
    _write(tmp_path, "1_Pooling/config.json", {"pooling_mode": "lasttoken", "include_prompt": False})
    assert read_pooling_spec(tmp_path) == PoolingSpec(mode="lasttoken", normalize=True)


def test_pooling_config_defaults_and_errors() -> None:
    assert parse_pooling_config({"word_embedding_dimension": 8}) == "mean"
    assert parse_pooling_config({"pooling_mode": ["max"]}) == "max"
    assert parse_pooling_config({"pooling_mode_weightedmean_tokens": True}) == "weightedmean"
    with pytest.raises(ValueError, match="several pooling modes"):
        parse_pooling_config({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True})
    with pytest.raises(ValueError, match="'median'"):
        parse_pooling_config({"pooling_mode": "median"})


def test_unsupported_module_pipeline_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "modules.json", _modules("Transformer", "Pooling", "Dense", "Normalize"))
    _write(tmp_path, "1_Pooling/config.json", {"pooling_mode": "mean"})
    with pytest.raises(ValueError, match="not supported"):
        read_pooling_spec(tmp_path)


@pytest.mark.parametrize(
    ("config", "spec"),
    [
        ({"architectures": ["Qwen2ForCausalLM"]}, PoolingSpec("lasttoken", True)),
        ({"architectures": ["GPT2LMHeadModel"]}, PoolingSpec("lasttoken", True)),
        ({"architectures": ["BertModel"]}, PoolingSpec("mean", True)),
    ],
)
def test_default_spec_without_sentence_transformers_files(
    tmp_path: Path, config: dict[str, Any], spec: PoolingSpec
) -> None:
    _write(tmp_path, "config.json", config)
    assert read_pooling_spec(tmp_path) == spec


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"architectures": ["BertModel"]}, True),
        ({"architectures": ["XLMRobertaModel"]}, True),
        ({"architectures": ["LlamaForCausalLM"]}, False),
        ({"architectures": ["GPT2LMHeadModel"]}, False),
        ({"architectures": ["BertForSequenceClassification"]}, False),
        ({"architectures": ["T5Model"], "is_encoder_decoder": True}, False),
        ({}, False),
    ],
)
def test_detect_from_config(tmp_path: Path, config: dict[str, Any], expected: bool) -> None:
    _write(tmp_path, "config.json", config)
    assert detect_embedding_model(tmp_path) is expected


def test_detect_from_modules_json_and_empty_folder(tmp_path: Path) -> None:
    assert not detect_embedding_model(tmp_path)
    _write(tmp_path, "config.json", {"architectures": ["Qwen2ForCausalLM"]})
    _write(tmp_path, "modules.json", _modules("Transformer", "Pooling"))
    assert detect_embedding_model(tmp_path)
