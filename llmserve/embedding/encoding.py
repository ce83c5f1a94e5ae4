"""Embedding vectors in the OpenAI wire format: a JSON float list, or base64 float32 bytes.

The official SDK sends `encoding_format = "base64"` unless the caller picks one, and decodes with
`np.frombuffer(base64.b64decode(s), dtype="float32")`, so base64 is the default path and must be
little-endian float32, byte for byte.
"""

from __future__ import annotations

import base64
from typing import Literal, get_args

import numpy as np
import torch

EncodingFormat = Literal["float", "base64"]
ENCODING_FORMATS: tuple[str, ...] = get_args(EncodingFormat)


def to_float32_array(vec: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 1-D little-endian float32 numpy copy of `vec` [D] (a torch row or a numpy array)."""
    if isinstance(vec, torch.Tensor):
        vec = vec.detach().to(device="cpu", dtype=torch.float32).numpy()
    array = np.asarray(vec).astype("<f4", copy=False)
    if array.ndim != 1:
        raise ValueError(f"embedding has shape {array.shape}: expected one vector [D]")
    return array


def encode_embedding(vec: np.ndarray | torch.Tensor, encoding_format: str = "float") -> list[float] | str:
    """One embedding [D] as OpenAI's `embedding` field.

    "float" -> list of Python floats (each exactly the float32 value);
    "base64" -> base64 text of the little-endian float32 bytes.
    """
    array = to_float32_array(vec)
    if encoding_format == "float":
        return [float(x) for x in array.tolist()]
    if encoding_format == "base64":
        return base64.b64encode(array.tobytes()).decode("ascii")
    raise ValueError(f"encoding_format = {encoding_format!r}: expected one of {ENCODING_FORMATS}")


def decode_base64_embedding(text: str) -> np.ndarray:
    """Inverse of `encode_embedding(..., "base64")`: [D] float32 (for tests and clients)."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4")
