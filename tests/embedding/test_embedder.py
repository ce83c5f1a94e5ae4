"""Tests for llmserve.embedding.embedder against sentence-transformers on the real MiniLM model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llmserve.embedding.embedder import (
    Embedder,
    pad_batch,
    plan_sub_batches,
    read_max_input_tokens,
    truncate_ids,
)

TEXTS = [
    "Hello world",
    "The cat sat on the mat.",
    "How do I reset my password if I no longer have access to my e-mail account?",
    "Ünïcödé, accents and CJK: 東京は日本の首都です。",
    "def embed(batch): return model(batch).mean(dim=1)  # code is text too",
    "42",
    "Embeddings map sentences to vectors; similar meanings end up close together, "
    "which makes them useful for search, clustering and retrieval-augmented generation.",
    # Longer than MiniLM's max_seq_length (256): exercises truncation on both sides.
    " ".join(
        f"Sentence number {i} talks about rivers, mountains and the weather in spring." for i in range(40)
    ),
]


@pytest.fixture(scope="module")
def embedder(minilm_dir: Path) -> Embedder:
    return Embedder(minilm_dir, max_batch_tokens=4096)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def token_ids(tokenizer: PreTrainedTokenizerBase, embedder: Embedder) -> list[list[int]]:
    special = set(tokenizer.all_special_ids)
    return [truncate_ids(tokenizer(t)["input_ids"], embedder.max_input_tokens, special) for t in TEXTS]


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    return torch.from_numpy(model.encode(TEXTS, batch_size=len(TEXTS)))  # [N, D]


def test_properties(embedder: Embedder) -> None:
    assert embedder.max_input_tokens == 256  # sentence_bert_config.json, not the 512 positions
    assert embedder.num_dimensions == 384
    assert embedder.pad_token_id == 0


def test_long_text_is_truncated_like_the_tokenizer(
    token_ids: list[list[int]], tokenizer: PreTrainedTokenizerBase
) -> None:
    expected = tokenizer(TEXTS[-1], truncation=True, max_length=256)["input_ids"]
    assert token_ids[-1] == expected
    assert len(tokenizer(TEXTS[-1])["input_ids"]) > 256


def test_matches_sentence_transformers(
    embedder: Embedder, token_ids: list[list[int]], reference: torch.Tensor
) -> None:
    vectors = embedder.embed(token_ids)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == torch.float32 and vectors.device.type == "cpu"
    cosine = torch.nn.functional.cosine_similarity(vectors, reference, dim=-1)
    assert cosine.min().item() >= 0.9999, cosine.tolist()
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(len(TEXTS)))


@pytest.mark.parametrize("max_batch_tokens", [64, 4096], ids=["many-sub-batches", "one-padded-batch"])
def test_alone_equals_inside_mixed_batch(
    embedder: Embedder, token_ids: list[list[int]], max_batch_tokens: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedder, "max_batch_tokens", max_batch_tokens)
    together = embedder.embed(token_ids)
    for i, ids in enumerate(token_ids):
        torch.testing.assert_close(embedder.embed([ids])[0], together[i], rtol=0, atol=1e-5)


def test_duplicates_and_empty_batch(embedder: Embedder, token_ids: list[list[int]]) -> None:
    vectors = embedder.embed([token_ids[1], token_ids[0], token_ids[1]])
    torch.testing.assert_close(vectors[0], vectors[2], rtol=0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_rejects_empty_and_too_long_inputs(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="input 1 has 0 tokens"):
        embedder.embed([[101, 102], []])
    with pytest.raises(ValueError, match="input 0 has 257 tokens: expected 1 to 256"):
        embedder.embed([[101] * 257])


def test_refuses_pickle_only_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="allow_pickle"):
        Embedder(tmp_path)


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("ids", "max_len", "expected"),
    [
        ([101, 1, 2, 3, 4, 102], 4, [101, 1, 2, 102]),
        ([101, 1, 2, 102], 4, [101, 1, 2, 102]),
        ([101, 1, 2, 3], 3, [101, 1, 2]),  # no trailing special: plain cut
        ([1, 2, 3, 102], 2, [1, 102]),
        ([101, 102, 102], 2, [101, 102]),  # only specials: keep the first max_len
        ([101, 1, 2, 102], 0, []),
    ],
)
def test_truncate_ids(ids: list[int], max_len: int, expected: list[int]) -> None:
    assert truncate_ids(ids, max_len, {101, 102}) == expected


def test_truncate_ids_without_specials() -> None:
    assert truncate_ids([101, 1, 2, 102], 3) == [101, 1, 2]


def test_plan_sub_batches_bounds_padded_tokens() -> None:
    lengths = [3, 10, 1, 10, 4, 2]
    groups = plan_sub_batches(lengths, max_batch_tokens=20)
    assert groups == [[1, 3], [4, 0, 5, 2]]
    assert plan_sub_batches([50, 5], max_batch_tokens=20) == [[0], [1]]  # oversize input alone
    assert plan_sub_batches([], max_batch_tokens=20) == []


def test_pad_batch() -> None:
    input_ids, mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_max_input_tokens_fallback_uses_tokenizer_limit(tmp_path: Path) -> None:
    roberta_like = SimpleNamespace(max_position_embeddings=514)
    assert read_max_input_tokens(tmp_path, roberta_like) == 514
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    assert read_max_input_tokens(tmp_path, roberta_like) == 512
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    assert read_max_input_tokens(tmp_path, roberta_like) == 514


# ---------------------------------------------------------------- a causal LM serving embeddings


@pytest.fixture(scope="module")
def tiny_causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama saved as `LlamaForCausalLM`, without sentence-transformers files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
    )
    folder = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_causal_lm_uses_last_token_and_is_padding_invariant(tiny_causal_dir: Path) -> None:
    embedder = Embedder(tiny_causal_dir, pad_token_id=0)
    assert embedder.pooling.mode == "lasttoken" and embedder.pooling.normalize
    assert embedder.max_input_tokens == 128
    inputs = [[1, 5, 9, 13, 2], [1, 7], [1, 3, 4, 5, 6, 7, 8, 9, 10]]
    together = embedder.embed(inputs)
    for i, ids in enumerate(inputs):
        torch.testing.assert_close(embedder.embed([ids])[0], together[i], rtol=0, atol=1e-5)
    # Same as the normalised final hidden state of an unpadded forward pass.
    with torch.inference_mode():
        hidden = embedder.model(input_ids=torch.tensor([inputs[0]])).last_hidden_state[0, -1]
    torch.testing.assert_close(together[0], torch.nn.functional.normalize(hidden, dim=-1))
