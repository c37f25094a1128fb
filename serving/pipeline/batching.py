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


def padded_buckets(prompt_lengths: Sequence[int], groups: Sequence[int], max_batch: int, max_cost: int,
                   min_fill: float = 0.8, small_cost: int = 2048) -> list[np.ndarray]:  # fmt: skip
    """The scorer's rows (a prompt of `prompt_lengths[i]` tokens against a passage of `groups[i]` pooled groups)
    grouped into runs: sorted by prompt length, then groups, each run padded to its longest prompt and its most
    groups. A run takes the next row while it stays within `max_batch` rows and `max_cost` padded cost (rows ×
    (prompt + groups), the scheduler's unit), and either at least `min_fill` of that cost is real or it is still
    under `small_cost`. A row over the budget still gets a run of its own."""
    if max_batch < 1 or max_cost < 1 or not 0 <= min_fill <= 1:
        raise ValueError("max_batch and max_cost must be positive and min_fill in [0, 1]")
    prompts, sizes = np.asarray(prompt_lengths, dtype=np.int64), np.asarray(groups, dtype=np.int64)
    order = np.lexsort((sizes, prompts))
    runs: list[np.ndarray] = []
    start, real, longest_prompt, most_groups = 0, 0, 0, 0
    for pos, index in enumerate(order):
        p, g = int(prompts[index]), int(sizes[index])
        top_p, top_g = max(longest_prompt, p), max(most_groups, g)
        padded = (pos - start + 1) * (top_p + top_g)
        fits = pos - start + 1 <= max_batch and padded <= max_cost and (real + p + g >= min_fill * padded
                                                                        or padded <= small_cost)  # fmt: skip
        if pos > start and not fits:
            runs.append(order[start:pos])
            start, real, top_p, top_g = pos, 0, p, g
        real += p + g
        longest_prompt, most_groups = top_p, top_g
    if len(order):
        runs.append(order[start:])
    return runs
