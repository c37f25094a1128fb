"""Helpers shared by the TritonPythonModel classes: inputs, parameters, and errors → TritonError.

Only the model files import `triton_python_backend_utils`; it is passed in here so this module
imports (and is tested) outside Triton.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from nestrank.errors import NestrankError, ValidationError


def decode_texts(array: np.ndarray | None, field: str) -> list[str]:
    """A BYTES tensor ([N] or [N, 1]) → N strings; invalid UTF-8 is refused with its index."""
    if array is None:
        raise ValidationError(field, "missing input tensor")
    texts = []
    for i, value in enumerate(array.reshape(-1)):
        if isinstance(value, str):
            texts.append(value)
            continue
        try:
            texts.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ValidationError(f"{field}[{i}]", f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
    return texts


def request_parameters(request) -> dict[str, Any]:
    raw = request.parameters()
    return json.loads(raw) if raw else {}


def model_parameters(model_config: dict) -> dict[str, str]:
    return {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}


def error_response(pb_utils, err: Exception):
    """InferenceResponse carrying `err` with its status code; unknown exceptions become INTERNAL."""
    if isinstance(err, NestrankError):
        code = getattr(pb_utils.TritonError, err.triton_code)
        message = str(err)
    else:
        code = pb_utils.TritonError.INTERNAL
        message = f"internal error: {type(err).__name__}: {err}"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
