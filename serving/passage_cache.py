"""The server's passage-state cache: pooled states keyed by content hash and ratio, LRU bounded in bytes.

A passage stored at ratio r serves every multiple of r exactly (MEP re-pooling), so a lookup at
ratio R also accepts the coarsest stored divisor of R.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # clients import passage_id; keep them free of the tokenizers runtime
    from nestrank.serving.reranker import PooledPassage


def passage_id(document: str) -> str:
    """The id clients and server agree on: a hash of the document's text."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()[:32]


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
        self._entries: OrderedDict[tuple[str, int], PooledPassage] = OrderedDict()
        self.stats = CacheStats()

    def get(self, pid: str, ratio: int) -> PooledPassage | None:
        """The passage at `ratio`, re-pooled from the coarsest stored divisor of it; counts a hit or a miss."""
        for stored in sorted((r for r in range(ratio, 0, -1) if ratio % r == 0), reverse=True):
            entry = self._entries.get((pid, stored))
            if entry is not None:
                self._entries.move_to_end((pid, stored))
                self.stats.hits += 1
                return entry.at_ratio(ratio)
        self.stats.misses += 1
        return None

    def put(self, pid: str, passage: PooledPassage) -> None:
        key = (pid, passage.ratio)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        if passage.nbytes > self.max_bytes:
            return  # larger than the whole cache: serve it, don't keep it
        self._entries[key] = passage
        self.stats.bytes += passage.nbytes
        while self.stats.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.stats.bytes -= evicted.nbytes
            self.stats.evictions += 1
        self.stats.entries = len(self._entries)
