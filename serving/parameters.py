"""Frozen config dataclasses ⇄ Triton model `parameters` (a string map): each field as JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from nestrank.errors import ValidationError

T = TypeVar("T")


def _tuples(value: Any) -> Any:
    # JSON has no tuples; frozen dataclasses hold them (hashable, immutable).
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def to_parameters(config: Any) -> dict[str, str]:
    return {f.name: json.dumps(getattr(config, f.name)) for f in dataclasses.fields(config)}


def from_parameters(cls: type[T], parameters: Mapping[str, str]) -> T:
    """Known fields only, so a model directory written by a newer exporter still loads."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _tuples(json.loads(v)) for k, v in parameters.items() if k in known})


# Request parameters arrive typed (gRPC) or as strings (HTTP); both are accepted, nothing else.
def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValidationError(name, f"must be a boolean, got {value!r}")


def as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValidationError(name, f"must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValidationError(name, f"must be an integer, got {value!r}")


def as_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string, got {value!r}")
    return value
