"""Request tensors for Triton's gRPC clients (the sync and asyncio modules share these classes), the checks that
make every bad text a ValidationError before anything is sent, and reading outputs back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput

from nestrank.protocol.errors import BackendError, ValidationError


def encode_text(field: str, text) -> bytes:
    """`text` as UTF-8, or a ValidationError naming `field`: not a string, empty, or not encodable (a lone
    surrogate, as `surrogateescape` or JSON `\\ud800` leave behind)."""
    if not isinstance(text, str):
        raise ValidationError(field, f"expected a string, got {type(text).__name__}")
    if not text:
        raise ValidationError(field, "empty string; send at least one character")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValidationError(field, f"not valid Unicode: a lone surrogate at character {err.start}") from None


def encode_texts(field: str, texts) -> list[bytes]:
    """A list of texts, each checked by `encode_text` (`field[i]` names a bad one)."""
    if isinstance(texts, (str, bytes)):
        raise ValidationError(field, "expected a list of strings, got a single string")
    try:
        texts = list(texts)
    except TypeError:
        raise ValidationError(field, f"expected a list of strings, got {type(texts).__name__}") from None
    if not texts:
        raise ValidationError(field, "empty; send at least one")
    return [encode_text(f"{field}[{i}]", t) for i, t in enumerate(texts)]


def text_input(name: str, texts: Sequence[str | bytes], shape: list[int]) -> InferInput:
    """A BYTES tensor of texts (str, encoded as UTF-8, or bytes already encoded) in `shape`."""
    tensor = InferInput(name, shape, "BYTES")
    encoded = [t.encode("utf-8") if isinstance(t, str) else t for t in texts]
    tensor.set_data_from_numpy(np.array(encoded, dtype=object).reshape(shape))
    return tensor


def array_input(name: str, array: np.ndarray, datatype: str) -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def requested(*names: str) -> list[InferRequestedOutput]:
    return [InferRequestedOutput(name) for name in names]


def output(result, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Output `name` of an InferResult; a BackendError when the server left it out or sent another shape."""
    array = result.as_numpy(name)
    if array is None:
        raise BackendError(f"the server's response has no {name!r} output")
    if shape is not None and array.shape != tuple(shape):
        raise BackendError(f"the server's {name!r} output has shape {list(array.shape)}; expected {list(shape)}")
    return array
