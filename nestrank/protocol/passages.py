"""Pooled passage states on the wire: the one pack and unpack, and the ragged `PassageStates` clients keep.

A passage is its MEP states [G, H] and per-group token counts [G]. On the wire a list of them travels as
zero-padded [N, G_max, H] states and [N, G_max] int32 counts, where a count of 0 marks padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Passage = tuple[np.ndarray, np.ndarray]  # (states [G, H], counts [G])


def trim(states: np.ndarray, counts: np.ndarray) -> Passage:
    """One passage without its trailing empty groups (padding)."""
    valid = np.flatnonzero(counts > 0)
    end = int(valid[-1]) + 1 if valid.size else 0
    return states[:end], counts[:end]


def pack(passages: Sequence[Passage], dtype=np.float32, hidden: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Passages → zero-padded [N, G, H] states (`dtype`) and [N, G] int32 counts."""
    longest = max((len(c) for _, c in passages), default=0)
    width = passages[0][0].shape[1] if passages else (hidden or 0)
    states = np.zeros((len(passages), longest, width), dtype=dtype)
    counts = np.zeros((len(passages), longest), dtype=np.int32)
    for row, (s, c) in enumerate(passages):
        states[row, : len(c)] = s
        counts[row, : len(c)] = c
    return states, counts


def unpack(states: np.ndarray, counts: np.ndarray) -> list[Passage]:
    """The inverse of pack: each row trimmed of its padding."""
    return [trim(s, c) for s, c in zip(states, counts)]


@dataclass(frozen=True)
class PassageStates:
    """Pooled passage states to keep beside your documents: passage i is states[offsets[i]:offsets[i+1]] (float16)
    with its per-group token counts. `save`/`load` them, and rerank without re-encoding."""

    states: np.ndarray  # [sum of groups, H] float16
    counts: np.ndarray  # [sum of groups] int32
    offsets: np.ndarray  # [N + 1] int64
    ratio: int
    ids: tuple[str, ...]  # content hashes, as the server computes them

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def passage(self, i: int) -> Passage:
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.states[start:end], self.counts[start:end]

    def padded(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """[n, G, H] float16 and [n, G] int32 for the wire."""
        return pack([self.passage(i) for i in indices], np.float16, hidden=self.states.shape[1])

    @classmethod
    def from_passages(cls, passages: Sequence[Passage], ratio: int, ids: Sequence[str]) -> PassageStates:
        sizes = [len(c) for _, c in passages]
        hidden = passages[0][0].shape[1] if passages else 0
        flat_states = np.concatenate([s for s, _ in passages]) if passages else np.zeros((0, hidden))
        flat_counts = np.concatenate([c for _, c in passages]) if passages else np.zeros(0)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return cls(flat_states.astype(np.float16), flat_counts.astype(np.int32), offsets, ratio, tuple(ids))

    @classmethod
    def from_padded(cls, states: np.ndarray, counts: np.ndarray, ratio: int, ids: Sequence[str]) -> PassageStates:
        return cls.from_passages(unpack(states, counts), ratio, ids)

    @classmethod
    def concat(cls, parts: Sequence[PassageStates]) -> PassageStates:
        if len({p.ratio for p in parts}) != 1:
            raise ValueError("cannot concatenate states of different ratios")
        passages = [p.passage(i) for p in parts for i in range(len(p))]
        return cls.from_passages(passages, parts[0].ratio, [i for p in parts for i in p.ids])

    def subset(self, indices: Sequence[int]) -> PassageStates:
        return PassageStates.from_passages(
            [self.passage(i) for i in indices], self.ratio, [self.ids[i] for i in indices]
        )

    def save(self, path: str | Path) -> None:
        np.savez(path, states=self.states, counts=self.counts, offsets=self.offsets, ratio=self.ratio,
                 ids=np.array(self.ids))  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> PassageStates:
        with np.load(path) as f:
            return cls(f["states"], f["counts"], f["offsets"], int(f["ratio"]), tuple(str(i) for i in f["ids"]))
