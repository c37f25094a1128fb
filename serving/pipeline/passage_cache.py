"""The first level: this process's passage-state values (the codec's bytes, under their store keys), LRU, bounded
in bytes. It sits in front of the passage store, so a hot passage costs no round trip.

An entry costs its key and value objects and its slot in the index; tests hold that count to what tracemalloc
measures.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass

INDEX_ENTRY_BYTES = 104  # one OrderedDict slot (key, value, links), measured on CPython 3.11


def entry_bytes(key: bytes, value: bytes) -> int:
    return sys.getsizeof(key) + sys.getsizeof(value) + INDEX_ENTRY_BYTES


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
        self._entries: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()
        self.stats = CacheStats()
        self._lock = threading.Lock()  # the rerank model works on several requests at once

    def get(self, key: bytes) -> bytes | None:
        """The value, or None; hits and misses are counted per passage by the caller, which may try several keys
        (ratios) for one passage."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: bytes, value: bytes) -> None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            size = entry_bytes(key, value)
            if size > self.max_bytes:
                return  # larger than the whole cache: serve it, don't keep it
            self._entries[key] = (value, size)
            self.stats.bytes += size
            while self.stats.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.stats.bytes -= evicted
                self.stats.evictions += 1
            self.stats.entries = len(self._entries)
