"""Quantizing embeddings to the contract's output precisions (sentence-transformers' `quantize_embeddings`).

int8/uint8 use *fixed* per-dimension ranges computed at export time from a calibration set, so a
text's embedding never depends on which other texts share its batch.
"""

from __future__ import annotations

import numpy as np

from nestrank.protocol.embedding import OUTPUT_DTYPES, PRECISIONS  # noqa: F401  (the precisions are the contract's)


def calibration_ranges(embeddings: np.ndarray) -> np.ndarray:
    """[2, D] per-dimension (min, max) of a calibration set."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError("calibration needs a [N>=2, D] matrix")
    return np.stack([embeddings.min(axis=0), embeddings.max(axis=0)]).astype(np.float32)


def quantize(embeddings: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """[N, D] float → [N, output_width] of OUTPUT_DTYPES[precision]."""
    if precision == "float32":
        return embeddings.astype(np.float32, copy=False)
    if precision == "float16":
        return embeddings.astype(np.float16)
    if precision in ("int8", "uint8"):
        if ranges is None or ranges.shape != (2, embeddings.shape[1]):
            raise ValueError(f"{precision} needs [2, {embeddings.shape[1]}] calibration ranges")
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        levels = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return (levels - 128).astype(np.int8) if precision == "int8" else levels.astype(np.uint8)
    if precision == "binary":
        return (np.packbits(embeddings > 0, axis=-1) - 128).astype(np.int8)
    if precision == "ubinary":
        return np.packbits(embeddings > 0, axis=-1)
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
