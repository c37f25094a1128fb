"""What an embedder serves (its Triton `parameters`) and one request's validated options.

Pure Python: the client runs the same `parse_options` before sending, so a bad request fails fast
with the message the server would give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nestrank.errors import ValidationError
from nestrank.serving.parameters import as_bool, as_int, as_str, check_names, from_parameters, shown, to_parameters
from nestrank.serving.quantization import PRECISIONS

POOLING_MODES = ("mean", "cls", "lasttoken")
INPUT_TYPE_ALIASES = {"passage": "document", "document": "document", "query": "query"}
TRUNCATION_DIRECTIONS = ("right", "left")


@dataclass(frozen=True)
class EmbedderConfig:
    """What an exported embedder serves; stored as the Triton model's `parameters`."""

    width: int
    max_length: int
    pooling: str
    dimensions: tuple[int, ...] = ()
    prompts: tuple[tuple[str, str], ...] = ()
    default_prompt: str | None = None
    precisions: tuple[str, ...] = PRECISIONS
    weights: str = "fp32"
    max_tokens_per_batch: int = 8192
    max_sequences_per_batch: int = 64
    intra_op_threads: int = 0

    def __post_init__(self):
        if self.width < 1:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if not self.dimensions:
            object.__setattr__(self, "dimensions", (self.width,))
        bad = [d for d in self.dimensions if not 0 < d <= self.width]
        if bad:
            raise ValueError(f"dimensions {bad} outside 1..{self.width}")
        object.__setattr__(self, "dimensions", tuple(sorted(set(self.dimensions), reverse=True)))
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown:
            raise ValueError(f"unknown precisions {sorted(unknown)}; known: {PRECISIONS}")
        names = dict(self.prompts)
        if self.default_prompt is not None and self.default_prompt not in names:
            raise ValueError(f"default_prompt {self.default_prompt!r} is not among prompts {sorted(names)}")
        if self.max_sequences_per_batch < 1 or self.max_tokens_per_batch < self.max_length:
            raise ValueError("max_sequences_per_batch must be >= 1 and max_tokens_per_batch >= max_length")

    def prompt_for(self, input_type: str | None) -> str:
        names = dict(self.prompts)
        if input_type is None:
            return names.get(self.default_prompt, "") if self.default_prompt else ""
        if input_type in names:
            return names[input_type]
        canonical = INPUT_TYPE_ALIASES.get(input_type)
        if canonical is None:
            allowed = sorted(set(INPUT_TYPE_ALIASES) | set(names))
            raise ValidationError("input_type", f"must be one of {', '.join(allowed)}, got {shown(input_type)}")
        # "passage" and "document" name the same side; a model without that prompt needs none.
        for alias, side in INPUT_TYPE_ALIASES.items():
            if side == canonical and alias in names:
                return names[alias]
        return ""

    def to_parameters(self) -> dict[str, str]:
        return to_parameters(self)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> EmbedderConfig:
        return from_parameters(cls, parameters)


@dataclass(frozen=True)
class EmbedOptions:
    """One request's knobs, validated against the model."""

    dimensions: int
    normalize: bool = True
    precision: str = "float32"
    truncate: bool = True
    truncation_direction: str = "right"
    input_type: str | None = None


def parse_options(parameters: Mapping[str, Any], config: EmbedderConfig) -> EmbedOptions:
    """Request parameters → EmbedOptions; unknown names and out-of-range values are refused."""
    check_names(parameters, EmbedOptions.__dataclass_fields__)
    p = dict(parameters)
    dims = as_int("dimensions", p["dimensions"]) if "dimensions" in p else config.width
    if dims not in config.dimensions:
        served = ", ".join(map(str, config.dimensions))
        raise ValidationError("dimensions", f"{dims} is not served; choose one of {served} (width {config.width})")
    precision = as_str("precision", p.get("precision", "float32"))
    if precision not in config.precisions:
        raise ValidationError("precision", f"must be one of {', '.join(config.precisions)}, got {shown(precision)}")
    normalize = as_bool("normalize", p.get("normalize", True))
    if precision in ("int8", "uint8") and not normalize:
        raise ValidationError("precision", f"{precision} is calibrated for normalised embeddings; send normalize=true")
    direction = as_str("truncation_direction", p.get("truncation_direction", "right"))
    if direction not in TRUNCATION_DIRECTIONS:
        raise ValidationError(
            "truncation_direction", f"must be one of {', '.join(TRUNCATION_DIRECTIONS)}, got {shown(direction)}"
        )
    input_type = as_str("input_type", p["input_type"]) if "input_type" in p else None
    config.prompt_for(input_type)  # validates the name
    return EmbedOptions(
        dimensions=dims,
        normalize=normalize,
        precision=precision,
        truncate=as_bool("truncate", p.get("truncate", True)),
        truncation_direction=direction,
        input_type=input_type,
    )


def validate_texts(texts: Sequence[str], field_name: str = "text") -> None:
    if len(texts) == 0:
        raise ValidationError(field_name, "no texts in the request; send at least one")
    for i, text in enumerate(texts):
        if len(text) == 0:
            raise ValidationError(f"{field_name}[{i}]", "empty string; send at least one character")
