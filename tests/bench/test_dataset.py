"""Tests of llmserve/bench/dataset.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmserve.bench.dataset import (
    allowed_token_ids,
    build_prompts,
    build_token_prompt,
    build_word_prompt,
    load_tokenizer,
    sample_lengths,
)
from llmserve.bench.options import BenchError, BenchOptions


class MergingTokenizer:
    """Letters a..z are ids 0..25, "aa" is 26, "<s>" (special) is 27; encoding merges "aa".

    Decoding then re-encoding changes the length, which is what prompt building must absorb.
    """

    all_special_ids = [27]
    _VOCAB = [chr(ord("a") + i) for i in range(26)] + ["aa", "<s>"]

    def __len__(self) -> int:
        return len(self._VOCAB)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            if text.startswith("aa", i):
                ids.append(26)
                i += 2
            else:
                ids.append(ord(text[i]) - ord("a"))
                i += 1
        return ids

    def decode(self, token_ids: Any, skip_special_tokens: bool = True) -> str:
        return "".join(self._VOCAB[int(i)] for i in token_ids if not (skip_special_tokens and i == 27))


def test_sample_lengths_stay_in_range() -> None:
    rng = np.random.default_rng(0)
    lengths = sample_lengths(100, 0.2, 500, rng)
    assert min(lengths) >= 80 and max(lengths) <= 120
    assert len(set(lengths)) > 10


def test_sample_lengths_without_range_are_exact_and_at_least_one() -> None:
    rng = np.random.default_rng(0)
    assert sample_lengths(7, 0.0, 5, rng) == [7] * 5
    assert min(sample_lengths(1, 0.9, 50, rng)) >= 1


def test_word_prompt_has_requested_word_count() -> None:
    assert len(build_word_prompt(37, np.random.default_rng(1)).split()) == 37


def test_special_tokens_are_never_sampled() -> None:
    assert 27 not in allowed_token_ids(MergingTokenizer()).tolist()


@pytest.mark.parametrize("num_tokens", [1, 5, 64])
def test_token_prompt_reencodes_to_requested_length(num_tokens: int) -> None:
    tokenizer = MergingTokenizer()
    rng = np.random.default_rng(3)
    text, count = build_token_prompt(tokenizer, allowed_token_ids(tokenizer), num_tokens, rng)
    assert count == len(tokenizer.encode(text)) == num_tokens


def test_prompts_are_deterministic_per_seed() -> None:
    options = BenchOptions(num_prompts=4, input_len=20, output_len=8, range_ratio=0.5, seed=5)
    first, again = build_prompts(options), build_prompts(options)
    assert first == again
    assert build_prompts(BenchOptions(num_prompts=4, input_len=20, seed=6)) != first
    assert all(len(p.text.split()) == p.num_prompt_tokens for p in first)
    assert all(4 <= p.num_output_tokens <= 12 for p in first)


def test_prompts_with_a_tokenizer_object() -> None:
    options = BenchOptions(num_prompts=3, input_len=16, output_len=4)
    prompts = build_prompts(options, MergingTokenizer())
    assert [p.num_prompt_tokens for p in prompts] == [16, 16, 16]
    assert [p.num_output_tokens for p in prompts] == [4, 4, 4]


def test_real_tokenizer_folder_is_loaded(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "red", "green", "blue", "cat", "dog", "runs"])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>"
    )
    wrapped.save_pretrained(tmp_path)
    options = BenchOptions(num_prompts=2, input_len=12, output_len=4, tokenizer=str(tmp_path))
    prompts = build_prompts(options)
    assert [p.num_prompt_tokens for p in prompts] == [12, 12]
    assert "<eos>" not in prompts[0].text and "<unk>" not in prompts[0].text


def test_missing_tokenizer_folder_is_a_bench_error(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(BenchError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "nope"))
