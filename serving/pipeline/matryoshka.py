"""Matryoshka slicing: the prefix emb[:d] of a Matryoshka embedding, re-normalised, is an embedding."""

from __future__ import annotations

import numpy as np


def default_dimensions(width: int, smallest: int = 32) -> tuple[int, ...]:
    """The full width plus every power of two below it down to `smallest`, largest first."""
    dims = {width}
    d = 1 << (width.bit_length() - 1)
    while d >= smallest:
        if d < width:
            dims.add(d)
        d //= 2
    return tuple(sorted(dims, reverse=True))


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


def truncate_dimensions(embeddings: np.ndarray, dimensions: int, normalize: bool) -> np.ndarray:
    """[N, D] → [N, dimensions] prefix, re-normalised when `normalize`."""
    if not 0 < dimensions <= embeddings.shape[-1]:
        raise ValueError(f"dimensions must be in 1..{embeddings.shape[-1]}, got {dimensions}")
    prefix = embeddings[..., :dimensions]
    return l2_normalize(prefix) if normalize else np.ascontiguousarray(prefix)
