"""MEP (Matryoshka embedding pooling) of passage token states, as KaLM-Reranker-V1 defines it.

A mask-aware mean over each consecutive group of `ratio` token states; a group is valid if any of
its tokens is. Each group keeps its token count, so any coarser ratio is re-pooled *exactly* from
stored states (a count-weighted mean of means): one stored ratio serves all its multiples.
"""

from __future__ import annotations

import numpy as np

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.passages import PassageStates

# Part of every passage fingerprint: bump it when pooling changes what it computes, so that states pooled by the
# earlier code are never read again.
VERSION = 1


def pool(states: np.ndarray, mask: np.ndarray, ratio: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, L, H] states, [B, L] mask → ([B, ceil(L/r), H] float32 means, [B, ceil(L/r)] int32 counts)."""
    return repool(states, mask.astype(np.int32), ratio)


def repool(pooled: np.ndarray, counts: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Groups of `factor` consecutive (mean, count) pairs → their count-weighted means and summed counts.

    With counts of 0/1 this is MEP itself; with counts from an earlier pooling it is exact re-pooling.
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    batch, length, hidden = pooled.shape
    groups = -(-length // factor)
    pad = groups * factor - length
    weights = counts.astype(np.float32)
    if pad:
        pooled = np.concatenate([pooled, np.zeros((batch, pad, hidden), pooled.dtype)], axis=1)
        weights = np.concatenate([weights, np.zeros((batch, pad), np.float32)], axis=1)
    weights = weights.reshape(batch, groups, factor)
    sums = np.einsum("bgf,bgfh->bgh", weights, pooled.reshape(batch, groups, factor, hidden).astype(np.float32))
    totals = weights.sum(axis=2)
    means = sums / np.maximum(totals, 1.0)[..., None]
    return means.astype(np.float32), totals.astype(np.int32)


def at_ratio(passages: PassageStates, ratio: int) -> PassageStates:
    """The same passages at `ratio`, a multiple of theirs: exact re-pooling (each group keeps its token count),
    the float32 means rounded to float16 once."""
    if ratio == passages.ratio:
        return passages
    if ratio % passages.ratio:
        raise ValidationError("compression_ratio", f"{ratio} is not a multiple of the stored ratio {passages.ratio}")
    states, counts = passages.padded()
    pooled, pooled_counts = repool(states, counts, ratio // passages.ratio)
    return PassageStates.from_padded(pooled, pooled_counts, ratio, passages.ids, passages.fingerprint)
