"""Cutting many items into requests: sorted by length first (each request pads little), order restored after."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def split_by_length(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices sorted by length, cut into requests of at most `batch_size` items."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
