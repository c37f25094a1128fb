"""The embedding contract: what an embedder serves (its Triton `parameters`), one request's options, the output
precisions, and the model's tensors. The server and the client validate with the same rules.

Honest outputs: one output per dtype, so that what the model's metadata declares is what comes back. The
request's `precision` picks the output: float32 → `embeddings` (FP32), float16 → `embeddings_fp16` (FP16),
int8 and binary → `embeddings_int8` (INT8), uint8 and ubinary → `embeddings_uint8` (UINT8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.limits import EmbedLimits, limits_of
from nestrank.protocol.parameters import (
    INTERACTIVE,
    as_bool,
    as_int,
    as_str,
    check_names,
    from_parameters,
    shown,
    to_parameters,
    traffic_class,
)
from nestrank.protocol.tensors import Signature, Tensor

# sentence-transformers' `quantize_embeddings` definitions; packed precisions hold 8 dimensions a byte.
PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
PACKED = ("binary", "ubinary")
OUTPUT_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
                 "binary": np.int8, "ubinary": np.uint8}  # fmt: skip
EMBEDDING_OUTPUTS = {
    "float32": "embeddings",
    "float16": "embeddings_fp16",
    "int8": "embeddings_int8",
    "binary": "embeddings_int8",
    "uint8": "embeddings_uint8",
    "ubinary": "embeddings_uint8",
}
TEXT = "text"


def output_width(precision: str, dimensions: int) -> int:
    """Columns of the quantized matrix: packed precisions hold 8 dimensions a byte."""
    return (dimensions + 7) // 8 if precision in PACKED else dimensions


def unpack_binary(packed: np.ndarray, dimensions: int) -> np.ndarray:
    """Packed binary/ubinary rows → [N, dimensions] of 0/1 (uint8), for Hamming or rescoring."""
    as_unsigned = (packed.astype(np.int16) + 128).astype(np.uint8) if packed.dtype == np.int8 else packed
    return np.unpackbits(as_unsigned, axis=-1, count=dimensions)


def embed_signature(max_batch_size: int) -> Signature:
    datatypes = {
        "embeddings": "FP32",
        "embeddings_fp16": "FP16",
        "embeddings_int8": "INT8",
        "embeddings_uint8": "UINT8",
    }
    return Signature(
        inputs=(Tensor(TEXT, "BYTES", (1,)),),
        outputs=tuple(Tensor(name, datatype, (-1,)) for name, datatype in datatypes.items()),
        max_batch_size=max_batch_size,
    )


POOLING_MODES = ("mean", "cls", "lasttoken")
INPUT_TYPE_ALIASES = {"passage": "document", "document": "document", "query": "query"}
TRUNCATION_DIRECTIONS = ("right", "left")


@dataclass(frozen=True)
class EmbedderConfig(EmbedLimits):
    """What an exported embedder serves; stored as the Triton model's `parameters`. Its limits (EmbedLimits:
    `max_batch_tokens`, `max_queue_wait_s`, ...) are keyword fields of it, like every other."""

    # Names exports before the limits config wrote, read under today's (from_parameters).
    RENAMED: ClassVar[dict[str, str]] = {"max_tokens_per_batch": "max_run_tokens",
                                         "max_sequences_per_batch": "max_run_sequences"}  # fmt: skip

    width: int
    max_length: int
    pooling: str
    dimensions: tuple[int, ...] = ()
    prompts: tuple[tuple[str, str], ...] = ()
    default_prompt: str | None = None
    precisions: tuple[str, ...] = PRECISIONS
    weights: str = "fp32"
    tensorrt_fp16: bool = False  # on a GPU with TensorRT: build fp16 engines (the graph's weights stay as exported)
    # Depth: the checkpoint's layers (0: not recorded, exports before the depth ladder) and the served ladder, the
    # full depth last (empty: the full depth only, one graph). A ladder is a chain of segment graphs, one per step.
    num_layers: int = 0
    layers: tuple[int, ...] = ()
    fused: bool = False  # the graphs went through ONNX Runtime's transformer optimizer at export

    def __post_init__(self):
        super().__post_init__()
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
        if self.num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {self.num_layers}")
        if self.layers:
            if not self.num_layers:
                raise ValueError("a depth ladder (layers) needs num_layers, the checkpoint's depth")
            bad = [k for k in self.layers if not 0 < k <= self.num_layers]
            if bad:
                raise ValueError(f"layers {bad} outside 1..{self.num_layers}")
            object.__setattr__(self, "layers", tuple(sorted(set(self.layers) | {self.num_layers})))
        names = dict(self.prompts)
        if self.default_prompt is not None and self.default_prompt not in names:
            raise ValueError(f"default_prompt {self.default_prompt!r} is not among prompts {sorted(names)}")
        for name in ("max_run_tokens", "max_batch_tokens"):  # a text of max_length tokens must fit
            if getattr(self, name) < self.max_length:
                raise ValueError(f"{name} must be >= max_length {self.max_length}, got {getattr(self, name)}")

    @property
    def served_layers(self) -> tuple[int, ...]:
        """The depths a request may ask for, ascending (empty: an export that did not record its depth)."""
        return self.layers or ((self.num_layers,) if self.num_layers else ())

    def depth_for(self, layers: int | None) -> int | None:
        """A request's `layers` → the served depth (None: the full depth); ValidationError naming the ladder."""
        if layers is None or layers == self.num_layers and self.num_layers:
            return None
        served = self.served_layers
        if layers not in served:
            ladder = ", ".join(map(str, served)) if served else "the full depth only (exported before depth ladders)"
            full = f" (full depth {self.num_layers})" if self.num_layers else ""
            raise ValidationError("layers", f"{layers} is not served; choose one of {ladder}{full}")
        return layers

    @property
    def limits(self) -> EmbedLimits:
        return limits_of(self, EmbedLimits)

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
    layers: int | None = None  # depth on the model's ladder; None: the full depth
    traffic_class: str = INTERACTIVE  # parameters.TRAFFIC_CLASSES: bulk embeddings wait behind interactive ones


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
    layers = config.depth_for(as_int("layers", p["layers"]) if p.get("layers") is not None else None)
    return EmbedOptions(
        dimensions=dims,
        normalize=normalize,
        precision=precision,
        truncate=as_bool("truncate", p.get("truncate", True)),
        truncation_direction=direction,
        input_type=input_type,
        layers=layers,
        traffic_class=traffic_class(p),
    )


def validate_texts(texts: Sequence[str], field_name: str = "text") -> None:
    if len(texts) == 0:
        raise ValidationError(field_name, "no texts in the request; send at least one")
    for i, text in enumerate(texts):
        if len(text) == 0:
            raise ValidationError(f"{field_name}[{i}]", "empty string; send at least one character")
