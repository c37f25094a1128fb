"""Length bucketing: sort sequences by length so each model batch pads little, then restore order.

Cutting a realistic mix into batches in arrival order costs several times the useful FLOPs
(DESIGN.md, "Where the time goes"); sorting first costs ~3%.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_buckets(
    lengths: Sequence[int], max_batch: int, max_tokens: int, min_fill: float = 0.9, small_tokens: int = 512
) -> list[np.ndarray]:
    """Indices grouped into batches of similar length, shortest first.

    A batch takes the next (longer) sequence while it stays within `max_batch` items and
    `max_tokens` padded tokens, and either at least `min_fill` of its padded tokens are real or it
    is still smaller than `small_tokens` (tiny GEMMs waste more than a little padding does).
    A single sequence over the budget still gets a batch of its own.
    """
    if max_batch < 1 or max_tokens < 1 or not 0 <= min_fill <= 1:
        raise ValueError("max_batch and max_tokens must be positive and min_fill in [0, 1]")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    buckets: list[np.ndarray] = []
    start, real = 0, 0
    for pos, index in enumerate(order):
        n = int(lengths[index])
        size = pos - start + 1
        padded = size * n  # sorted: this sequence is the longest so far
        fits = (
            size <= max_batch and padded <= max_tokens and ((real + n) >= min_fill * padded or padded <= small_tokens)
        )
        if pos > start and not fits:
            buckets.append(order[start:pos])
            start, real = pos, 0
        real += n
    if len(order):
        buckets.append(order[start:])
    return buckets
