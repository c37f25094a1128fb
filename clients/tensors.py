"""Request tensors for Triton's gRPC clients (the sync and asyncio modules share these classes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput


def text_input(name: str, texts: Sequence[str], shape: list[int]) -> InferInput:
    """A BYTES tensor of UTF-8 texts in `shape`."""
    tensor = InferInput(name, shape, "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=object).reshape(shape))
    return tensor


def array_input(name: str, array: np.ndarray, datatype: str) -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def requested(*names: str) -> list[InferRequestedOutput]:
    return [InferRequestedOutput(name) for name in names]
