"""The `parameters` maps of the wire. A model's config parameters are its frozen config dataclass, each field as
JSON (plus the version that exported it); a request's parameters are read typed, bounded, and echoed cut short in
errors (never a whole 100 KB value)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nestrank.protocol.errors import UnsupportedError, ValidationError

T = TypeVar("T")
MAX_STRING_CHARS = 4096  # any string parameter; the instruction is the longest anyone needs
_INTEGER = re.compile(r"-?[0-9]{1,18}")  # ASCII digits only: int() would also take "²" or "٣", and 10⁵-digit strings


def _tuples(value: Any) -> Any:
    # JSON has no tuples; frozen dataclasses hold them (hashable, immutable).
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def to_parameters(config: Any) -> dict[str, str]:
    return {f.name: json.dumps(getattr(config, f.name)) for f in dataclasses.fields(config)}


def from_parameters(cls: type[T], parameters: Mapping[str, str]) -> T:
    """Known fields only, so a model directory written by a newer exporter still loads; a field an older exporter
    wrote under another name (`cls.RENAMED`: old name → new) is read under its new one."""
    known = {f.name for f in dataclasses.fields(cls)}
    renamed = getattr(cls, "RENAMED", {})
    values = {renamed.get(k, k): v for k, v in parameters.items() if k in renamed}
    values.update((k, v) for k, v in parameters.items() if k in known)
    return cls(**{k: _tuples(json.loads(v)) for k, v in values.items() if k in known})


def string_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """A model config's `parameters` as {key: string}, from Triton's JSON form (`get_model_config(as_json=True)` or
    the config a Python model is given), whichever wrapping it comes in."""
    config = model_config.get("config", model_config)
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def exported_version(parameters: Mapping[str, str]) -> str | None:
    """The nestrank version that exported a model, from its string parameters (None: before versions were kept)."""
    from nestrank.protocol.headers import VERSION_PARAMETER

    return json.loads(parameters[VERSION_PARAMETER]) if VERSION_PARAMETER in parameters else None


@dataclass(frozen=True)
class ModelInfo(Generic[T]):
    """A served model as a client sees it: name, batch limit, its typed config, and the nestrank that exported it.
    Attributes of the config read through (`info.width`, `info.max_candidates`)."""

    name: str
    max_batch_size: int
    config: T
    exported_by: str | None = None

    def __getattr__(self, field: str):
        if field.startswith("__"):
            raise AttributeError(field)
        return getattr(self.config, field)

    @classmethod
    def read(cls, model_config: Mapping[str, Any], config_type: type[T]) -> ModelInfo[T]:
        """From Triton's JSON model config. A config that is not a nestrank `config_type` (another kind of model,
        a model nestrank did not export, a damaged export) is an UnsupportedError naming the model and the field."""
        name = "?"
        try:
            config = model_config.get("config", model_config)
            name = config.get("name", name)
            parameters = string_parameters(config)
            return cls(str(config["name"]), int(config.get("max_batch_size", 0)),
                       from_parameters(config_type, parameters), exported_version(parameters))  # fmt: skip
        except (AttributeError, KeyError, TypeError, ValueError) as err:  # ValueError covers bad JSON and configs
            reason = f"{type(err).__name__}: {str(err)[:200]}"
            raise UnsupportedError(f"model {shown(name)} is not a nestrank {config_type.__name__} ({reason})") from err


def shown(value: Any, limit: int = 40) -> str:
    """`value` for an error message: its repr, cut to `limit` characters, with its full length when cut."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:limit]}… ({size})"


# Request parameters arrive typed (gRPC) or as strings (HTTP); both are accepted, nothing else.
def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValidationError(name, f"must be true or false, got {shown(value)}")


def as_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValidationError(name, f"must be an integer, got {shown(value)}")
    if isinstance(value, str):
        if not _INTEGER.fullmatch(value.strip()):
            raise ValidationError(name, f"must be an integer (ASCII digits), got {shown(value)}")
        value = int(value.strip())
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValidationError(name, f"must be in {low}..{high}, got {shown(value)}")
    return value


def as_str(name: str, value: Any, max_chars: int = MAX_STRING_CHARS) -> str:
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string, got {shown(value)}")
    if len(value) > max_chars:
        raise ValidationError(name, f"{len(value)} characters exceed the limit of {max_chars}")
    return value


def check_names(parameters: Mapping[str, Any], allowed) -> None:
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise ValidationError(shown(unknown[0], 60).strip("'"), f"unknown parameter; accepted: {', '.join(allowed)}")


# Traffic classes (every model's `traffic_class` request parameter; Triton reserves the name `priority` for its own
# integer, which a Python-backend model cannot read). INTERACTIVE (rerank, embed: someone waits for the answer) goes
# ahead of BULK (warm, index, encode_passages: a job that indexes) in every scheduler: an interactive request is
# refused at once when it would wait past the queue bound; a bulk one is taken a chunk at a time, between
# interactive work, and waits for room (within its caller's deadline) instead.
TRAFFIC_CLASS = "traffic_class"
INTERACTIVE, BULK = "interactive", "bulk"
TRAFFIC_CLASSES = (INTERACTIVE, BULK)


def traffic_class(parameters: Mapping[str, Any], default: str = INTERACTIVE) -> str:
    value = as_str(TRAFFIC_CLASS, parameters.get(TRAFFIC_CLASS, default), 16)
    if value not in TRAFFIC_CLASSES:
        classes = ", ".join(TRAFFIC_CLASSES)
        raise ValidationError(TRAFFIC_CLASS, f"{shown(value)} is not a traffic class; one of {classes}")
    return value
