"""The server's passage-state cache: pooled states keyed by content hash and ratio, LRU bounded in bytes.

A passage stored at ratio r serves every multiple of r exactly (MEP re-pooling), so a lookup at
ratio R also accepts the coarsest stored divisor of R.

The bound counts what an entry really costs: its arrays (copied on the way in, so that a view never keeps a
larger padded batch alive), the objects around them and the index entry; tests hold the count to what
tracemalloc measures.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from nestrank.serving.reranker import PooledPassage

INDEX_ENTRY_BYTES = 104  # one OrderedDict slot (key, value, links), measured on CPython 3.11


def entry_bytes(key: tuple[str, int], passage: PooledPassage) -> int:
    """Memory one cached passage holds: arrays with their buffers, the objects, the key and its index slot."""
    objects = (passage, passage.__dict__, passage.states, passage.counts, key, key[0], key[1])
    return sum(sys.getsizeof(o) for o in objects) + INDEX_ENTRY_BYTES


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0


class PassageCache:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int], tuple[PooledPassage, int]] = OrderedDict()
        self.stats = CacheStats()

    def get(self, pid: str, ratio: int) -> PooledPassage | None:
        """The passage at `ratio`, re-pooled from the coarsest stored divisor of it; counts a hit or a miss."""
        for stored in sorted((r for r in range(ratio, 0, -1) if ratio % r == 0), reverse=True):
            entry = self._entries.get((pid, stored))
            if entry is not None:
                self._entries.move_to_end((pid, stored))
                self.stats.hits += 1
                return entry[0].at_ratio(ratio)
        self.stats.misses += 1
        return None

    def put(self, pid: str, passage: PooledPassage) -> None:
        key = (pid, passage.ratio)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        # Own copies: a view would keep the whole padded batch it came from alive.
        owned = type(passage)(np.array(passage.states, order="C"), np.array(passage.counts, order="C"), passage.ratio)
        size = entry_bytes(key, owned)
        if size > self.max_bytes:
            return  # larger than the whole cache: serve it, don't keep it
        self._entries[key] = (owned, size)
        self.stats.bytes += size
        while self.stats.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.stats.bytes -= evicted
            self.stats.evictions += 1
        self.stats.entries = len(self._entries)
