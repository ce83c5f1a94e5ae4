"""The synchronous embedding core: token ids in, one float32 vector per input out.

The worker thread gathers already-tokenized inputs from concurrent requests and calls
`Embedder.embed` once per batch. Inputs are sorted by length and cut into sub-batches of at most
`max_batch_tokens` padded tokens, so one long input does not make a whole batch pad to its length
and memory stays bounded. Truncation belongs to the caller (the API layer counts tokens);
`truncate_ids` is the helper it can use.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from llmserve.embedding.pooling import PoolingSpec, pool, read_pooling_spec

DEFAULT_MAX_BATCH_TOKENS = 16384
# tokenizer_config.json uses ~1e30 for "no limit"; anything above this is treated as unset.
_MAX_SANE_LENGTH = 10_000_000


def truncate_ids(ids: Sequence[int], max_len: int, special_ids: Collection[int] = ()) -> list[int]:
    """Cut `ids` to `max_len`, keeping the run of special tokens at each end (e.g. [CLS] ... [SEP]).

    Leading and trailing ids found in `special_ids` are kept and the middle is cut from the right,
    which matches a Hugging Face tokenizer called with `truncation=True, max_length=max_len`.
    Without `special_ids` (or when the special tokens alone exceed `max_len`) it keeps the first
    `max_len` ids.
    """
    if max_len < 0:
        raise ValueError(f"max_len = {max_len}: must be >= 0")
    if len(ids) <= max_len:
        return list(ids)
    num_prefix = 0
    while num_prefix < len(ids) and ids[num_prefix] in special_ids:
        num_prefix += 1
    num_suffix = 0
    while num_suffix < len(ids) - num_prefix and ids[len(ids) - 1 - num_suffix] in special_ids:
        num_suffix += 1
    if num_prefix + num_suffix >= max_len:
        return list(ids[:max_len])
    body = ids[num_prefix : max_len - num_suffix]
    return list(ids[:num_prefix]) + list(body) + list(ids[len(ids) - num_suffix :])


def plan_sub_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group input indices, longest first, so each group's padded size stays <= `max_batch_tokens`.

    A single input longer than the budget gets a group of its own. Returns lists of indices into
    `lengths`; together they cover every index exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    for i in order:
        # Sorted descending: the group's first member sets its padded length.
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def pad_batch(batch: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into `input_ids` [B, L] and `attention_mask` [B, L] (int64)."""
    max_len = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), max_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), max_len), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def read_max_input_tokens(model_dir: str | Path, model_config: Any) -> int:
    """Longest input the model takes: `max_seq_length` from `sentence_bert_config.json` if present,
    else the model's position limit (capped by the tokenizer's `model_max_length`, which accounts
    for e.g. RoBERTa's two reserved positions)."""
    model_dir = Path(model_dir)
    positions = getattr(model_config, "max_position_embeddings", None)
    limits = [int(positions)] if positions else []
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        max_seq_length = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
        if max_seq_length:
            return min([int(max_seq_length), *limits])
    tok_config = model_dir / "tokenizer_config.json"
    if tok_config.is_file():
        model_max_length = json.loads(tok_config.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(model_max_length, (int, float)) and 0 < model_max_length < _MAX_SANE_LENGTH:
            limits.append(int(model_max_length))
    if not limits:
        raise ValueError(f"{model_dir}: cannot tell the maximum input length (no max_position_embeddings)")
    return min(limits)


def _resolve_pad_token_id(model_dir: Path, model_config: Any, trust_remote_code: bool) -> int:
    """The tokenizer's pad id, else the config's pad/eos id, else 0 (pads are masked out anyway)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    for candidate in (
        tokenizer.pad_token_id,
        getattr(model_config, "pad_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(candidate, int):
            return candidate
    return 0


class Embedder:
    """One embedding model on one device: `embed(token id lists) -> [N, D] float32 CPU tensor`.

    Not thread-safe: one worker thread owns it.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        pad_token_id: int | None = None,
        pooling: PoolingSpec | None = None,
    ) -> None:
        """Load `AutoModel` from `model_dir` (safetensors only unless `allow_pickle`).

        `dtype` is a torch dtype or a name transformers accepts ("bfloat16", "auto", ...).

        `pad_token_id` defaults to the folder's tokenizer's; `pooling` defaults to the folder's spec
        (`read_pooling_spec`).
        """
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens = {max_batch_tokens}: must be >= 1")
        self.model_dir = Path(model_dir)
        if not allow_pickle and not any(self.model_dir.glob("*.safetensors")):
            raise ValueError(
                f"{self.model_dir}: no *.safetensors weights; pickle checkpoints need allow_pickle = true"
            )
        self.device = torch.device(device)
        self.max_batch_tokens = max_batch_tokens
        self.model = AutoModel.from_pretrained(
            self.model_dir,
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
        )
        self.model.to(self.device).eval()
        self.pooling = pooling if pooling is not None else read_pooling_spec(self.model_dir)
        self.pad_token_id = (
            pad_token_id
            if pad_token_id is not None
            else _resolve_pad_token_id(self.model_dir, self.model.config, trust_remote_code)
        )
        self._max_input_tokens = read_max_input_tokens(self.model_dir, self.model.config)
        forward_params = inspect.signature(self.model.forward).parameters
        self._takes_token_type_ids = "token_type_ids" in forward_params
        # Decoders would otherwise build a KV cache that nobody reads.
        self._takes_use_cache = "use_cache" in forward_params

    @property
    def max_input_tokens(self) -> int:
        """Longest token id list `embed` accepts."""
        return self._max_input_tokens

    @property
    def vocab_size(self) -> int:
        """Number of token ids the model's embedding table has (valid ids are 0 .. vocab_size - 1)."""
        return int(self.model.get_input_embeddings().num_embeddings)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def num_dimensions(self) -> int:
        """Length of each embedding vector."""
        return int(self.model.config.hidden_size)

    def embed(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """Embed each token id list; returns [N, D] float32 on CPU, row i for `batch[i]`.

        Raises ValueError for an empty input or one longer than `max_input_tokens`.
        """
        for index, ids in enumerate(batch):
            if not 0 < len(ids) <= self.max_input_tokens:
                raise ValueError(
                    f"input {index} has {len(ids)} tokens: expected 1 to {self.max_input_tokens}"
                )
        out = torch.empty((len(batch), self.num_dimensions), dtype=torch.float32)  # [N, D]
        for group in plan_sub_batches([len(ids) for ids in batch], self.max_batch_tokens):
            out[group] = self._embed_padded([batch[i] for i in group])
        return out

    def _embed_padded(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """One forward pass over a padded sub-batch -> [B, D] float32 on CPU."""
        input_ids, attention_mask = pad_batch(batch, self.pad_token_id)  # [B, L], [B, L]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._takes_token_type_ids:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        extra = {"use_cache": False} if self._takes_use_cache else {}
        with torch.inference_mode():
            hidden = self.model(**inputs, **extra).last_hidden_state  # [B, L, D]
            # Pool in float32: half-precision sums over long inputs lose digits.
            vectors = pool(hidden.float(), inputs["attention_mask"], self.pooling)  # [B, D]
        return vectors.cpu()
