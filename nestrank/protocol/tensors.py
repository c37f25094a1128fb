"""Tensor specifications: name, Triton datatype and dims (without the batch dimension). Export builds config.pbtxt
inputs and outputs from these; models and clients use the same names and dtypes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUMPY = {"BYTES": np.object_, "FP32": np.float32, "FP16": np.float16, "INT8": np.int8, "UINT8": np.uint8,
         "INT32": np.int32, "INT64": np.int64}  # fmt: skip


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # Triton's name for it: BYTES, FP32, FP16, INT8, UINT8, INT32, INT64
    dims: tuple[int, ...]
    optional: bool = False
    ragged_batch: bool = False  # requests of different sizes batch together (Triton's allow_ragged_batch)

    def __post_init__(self):
        if self.datatype not in NUMPY:
            raise ValueError(f"{self.name}: unknown datatype {self.datatype!r}")

    @property
    def numpy_dtype(self):
        return NUMPY[self.datatype]


@dataclass(frozen=True)
class Signature:
    """What one served model takes and returns."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int  # 0: no batch dimension; otherwise requests carry a leading batch dimension

    def placeholder_inputs(self) -> dict[str, np.ndarray]:
        """Each required input (the first one, where all are optional), empty where its dims allow (a variable
        dimension of 0; BYTES as b""), with the leading batch dimension of 1: what a request that carries no work (a
        model's own control requests) sends, since Triton's dynamic batcher refuses a request without inputs."""
        leading = (1,) if self.max_batch_size > 0 else ()
        required = [t for t in self.inputs if not t.optional] or list(self.inputs[:1])
        return {t.name: np.full(leading + tuple(0 if d < 0 else d for d in t.dims), b"" if t.datatype == "BYTES" else 0,
                                dtype=t.numpy_dtype)
                for t in required}  # fmt: skip
