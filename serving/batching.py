"""Length bucketing: sort sequences by length so each model batch pads little, then restore order.

Cutting a realistic mix into batches in arrival order costs several times the useful FLOPs
(DESIGN.md, "Where the time goes"); sorting first costs ~3%.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_buckets(lengths: Sequence[int], max_batch: int, max_tokens: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length.

    Each batch has at most `max_batch` items and at most `max_tokens` padded tokens (its longest
    length times its size), except that a single over-long item still gets a batch of its own.
    """
    if max_batch < 1 or max_tokens < 1:
        raise ValueError("max_batch and max_tokens must be positive")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    buckets: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        is_last = end == len(order)
        size = end - start
        # The next item is at least as long as all in the bucket, so it sets the padded length.
        if not is_last:
            longest_if_added = lengths[order[end]]
            if size + 1 <= max_batch and (size + 1) * longest_if_added <= max_tokens:
                continue
        buckets.append(order[start:end])
        start = end
    return buckets


def split_by_length(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Client-side: sorted indices cut into requests of at most `batch_size` items."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
