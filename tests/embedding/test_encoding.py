"""Tests for llmserve.embedding.encoding: the OpenAI `embedding` field, float and base64."""

from __future__ import annotations

import array
import base64
import json

import numpy as np
import pytest
import torch

from llmserve.embedding.encoding import decode_base64_embedding, encode_embedding

# Values that catch sloppy conversions: float32 rounding, signed zero, subnormals, extremes.
TRICKY = np.array(
    [0.1, -0.0, 1e-45, -3.4028235e38, 1.0000001, np.pi, -1 / 3, 65504.0, 2.0**-126],
    dtype=np.float32,
)


def _bits(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


@pytest.mark.parametrize("vec", [TRICKY, torch.from_numpy(TRICKY.copy())], ids=["numpy", "torch"])
def test_base64_round_trip_is_bit_exact_as_the_openai_sdk_decodes(vec: np.ndarray | torch.Tensor) -> None:
    encoded = encode_embedding(vec, "base64")
    assert isinstance(encoded, str)
    # The two decoders in openai's SDK (lib/_parsing/_embeddings.py): numpy, then array fallback.
    assert np.frombuffer(base64.b64decode(encoded), dtype="float32").tobytes() == _bits(TRICKY)
    assert array.array("f", base64.b64decode(encoded)).tobytes() == _bits(TRICKY)
    assert decode_base64_embedding(encoded).tobytes() == _bits(TRICKY)


def test_base64_is_little_endian_float32_bytes() -> None:
    assert encode_embedding(np.array([1.0, -2.0], dtype=np.float32), "base64") == base64.b64encode(
        b"\x00\x00\x80\x3f\x00\x00\x00\xc0"
    ).decode("ascii")
    big_endian = np.array([1.0, -2.0], dtype=">f4")
    assert encode_embedding(big_endian, "base64") == encode_embedding(big_endian.astype("<f4"), "base64")


def test_float_format_is_json_floats_exact_to_float32() -> None:
    encoded = encode_embedding(torch.from_numpy(TRICKY.copy()), "float")
    assert isinstance(encoded, list) and all(type(x) is float for x in encoded)
    decoded = json.loads(json.dumps(encoded))
    assert np.array(decoded, dtype=np.float32).tobytes() == _bits(TRICKY)


def test_wider_inputs_are_rounded_to_float32() -> None:
    assert encode_embedding(np.array([0.1], dtype=np.float64), "float") == [float(np.float32(0.1))]
    assert encode_embedding(torch.tensor([0.1], dtype=torch.bfloat16), "float") == [0.10009765625]


def test_errors() -> None:
    with pytest.raises(ValueError, match="'hex'"):
        encode_embedding(TRICKY, "hex")
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        encode_embedding(np.zeros((2, 2), dtype=np.float32), "float")
