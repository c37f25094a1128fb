"""One reranker's pooled passage states, wherever they are: this process's first level (an LRU of values) in front of
the passage store, under keys that cannot mix models.

- States: `nrps:<passage fingerprint>:<ratio>:<content id>` → `PassageStates.to_bytes()` of one passage; with int8
  states (the store URL's `states=int8`), `nrps:<passage fingerprint>:<ratio>:i8:<content id>` → its int8 value.
  Content addressed, so a value never changes: concurrent writers are harmless and reruns are idempotent. The two
  formats never read each other's values (a server switched to int8 re-encodes or re-indexes).
- The first level holds the values as stored (int8 ones at half the bytes) and decodes them on each read: the
  scorer sees float16 states either way.
- Aliases: `nrpa:<passage fingerprint>:<sha-256 of the user id>` → the content id that user id names (written by
  `nestrank index`; an id indexed again with other text points at the new text).

A lookup at ratio R takes states stored at R, else at the coarsest exported divisor of R (exact re-pooling).
A value that fails its header, its checksum, or names another model or ratio is a miss (counted), never a score.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nestrank.protocol.errors import STORE_FULL, STORE_UNAVAILABLE, StoreError, StoreFullError
from nestrank.protocol.passages import FINGERPRINT, CorruptStates, PassageStates, check_states_format
from nestrank.serving.pipeline.mep import at_ratio
from nestrank.serving.pipeline.passage_cache import PassageCache
from nestrank.serving.pipeline.passage_store import PassageStore


@dataclass
class StoreStats:
    hits: int = 0  # passages the store had
    misses: int = 0  # passages it did not have (corrupt values included)
    errors: int = 0  # operations that failed: the store unreachable (StoreError), or full (StoreFullError)
    corrupt: int = 0  # values that failed their header or checksum
    bytes_read: int = 0
    bytes_written: int = 0


def is_content_id(passage_id: str) -> bool:
    return FINGERPRINT.fullmatch(passage_id) is not None  # content ids are 128-bit hex, like fingerprints


class Passages:
    def __init__(self, fingerprint: str, ratios: Sequence[int], first_level: PassageCache, store: PassageStore,
                 on_fetch: Callable[[float], None] | None = None, states: str | None = None):  # fmt: skip
        """`states`: how passage states are held, float16 or int8 (default: the store's, from its URL)."""
        if not FINGERPRINT.fullmatch(fingerprint):
            raise ValueError(f"a passage fingerprint is 32 hex digits, got {fingerprint!r}")
        self.fingerprint = fingerprint
        self.states = check_states_format(states or store.states)
        self._namespace = {"float16": "", "int8": "i8:"}[self.states]  # content ids are hex: never "i8"
        self.ratios = tuple(sorted(ratios))
        self.first_level = first_level
        self.store = store
        self.stats = StoreStats()
        self.on_fetch = on_fetch or (lambda seconds: None)

    # -- keys -------------------------------------------------------------------------------------------------

    def states_key(self, content_id: str, ratio: int) -> bytes:
        return f"nrps:{self.fingerprint}:{ratio}:{self._namespace}{content_id}".encode()

    def alias_key(self, user_id: str) -> bytes:
        digest = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"nrpa:{self.fingerprint}:{digest}".encode()

    def _ladder(self, ratio: int) -> list[int]:
        """`ratio`, then its exported divisors, coarsest first."""
        return [ratio] + sorted((r for r in self.ratios if r < ratio and ratio % r == 0), reverse=True)

    # -- store access, errors counted and named ---------------------------------------------------------------

    def _store_call(self, what: str, call):
        try:
            return call()
        except StoreFullError as err:
            self.stats.errors += 1
            raise StoreFullError(f"{STORE_FULL}{what}: {err}") from None
        except StoreError as err:
            self.stats.errors += 1
            raise StoreError(f"{STORE_UNAVAILABLE}{what}: {err}") from None

    def _fetch(self, keys: list[bytes], strict: bool) -> list[bytes | None] | None:
        """The values (None where absent); None for all when the store failed and `strict` is off."""
        started = time.perf_counter()
        try:
            values = self._store_call("reading passage states", lambda: self.store.get_many(keys))
        except StoreError:
            if strict:
                raise
            return None
        self.on_fetch(time.perf_counter() - started)
        self.stats.bytes_read += sum(len(v) for v in values if v is not None)
        return values

    def _decode(self, key: bytes, value: bytes, ratio: int) -> PassageStates | None:
        """The stored passage, or None for a corrupt value: counted, and removed so that the next write of the
        passage (the documents path, an index rerun) replaces it."""
        try:
            passage = PassageStates.from_bytes(value, self.fingerprint, ratio, states=self.states)
            if len(passage) == 1:
                return passage
        except CorruptStates:
            pass
        self.stats.corrupt += 1
        try:
            self._store_call("removing a corrupt value", lambda: self.store.delete_many([key]))
        except (StoreError, StoreFullError):
            pass
        return None

    # -- reading ----------------------------------------------------------------------------------------------

    def get(self, content_ids: Sequence[str], ratio: int, *, strict: bool) -> dict[str, PassageStates]:
        """{content id: its passage at `ratio`} for those found: the first level, then the store in one batched
        fetch at `ratio`, then one more at the finer exported divisors for what is still missing. A store that
        fails makes everything it was asked a miss (counted), or with `strict` raises StoreError naming it."""
        ladder = self._ladder(ratio)
        found: dict[str, PassageStates] = {}
        pending = []
        for cid in dict.fromkeys(content_ids):
            for stored in ladder:
                value = self.first_level.get(self.states_key(cid, stored))
                if value is not None:
                    found[cid] = at_ratio(PassageStates.from_bytes(value, verify=False), ratio)
                    break
            else:
                pending.append(cid)
        self.first_level.stats.hits += len(found)
        self.first_level.stats.misses += len(pending)
        asked = len(pending)
        for ratios in ([ratio], ladder[1:]):
            if not pending or not ratios:
                break
            keys = [(cid, stored, self.states_key(cid, stored)) for cid in pending for stored in ratios]
            values = self._fetch([k for *_, k in keys], strict)
            if values is None:
                break  # the store failed: everything it was asked is a miss
            for (cid, stored, key), value in zip(keys, values):
                if cid in found or value is None:
                    continue
                passage = self._decode(key, value, stored)
                if passage is not None:
                    self.first_level.put(key, value)
                    found[cid] = at_ratio(passage, ratio)
            pending = [cid for cid in pending if cid not in found]
        self.stats.hits += asked - len(pending)
        self.stats.misses += len(pending)
        return found

    def resolve(self, passage_ids: Sequence[str]) -> list[str | None]:
        """Each id's content id: a user id's alias (one batched fetch), else the id itself when it is a content id,
        else None. A store that fails raises StoreError (UNAVAILABLE)."""
        aliases = self.aliases(passage_ids)
        return [cid or (pid if is_content_id(pid) else None) for pid, cid in zip(passage_ids, aliases)]

    # -- writing ----------------------------------------------------------------------------------------------

    def as_stored(self, passages: PassageStates) -> PassageStates:
        """`passages` as this store gives them back: what the documents path scores right after encoding, so that
        a passage's score does not change once it is stored (int8), and the same passages otherwise."""
        return passages.as_stored(self.states)

    def put(self, content_ids: Sequence[str], passages: PassageStates, *, pinned: bool) -> list[int]:
        """Stores passage i under content_ids[i] at its ratio, in one batch; the bytes written per passage (0 for
        a repeat). On-demand writes (pinned False) that fail are counted and otherwise ignored: the caller has its
        answer. Pinned writes that fail raise."""
        values: dict[bytes, bytes] = {}
        written = []
        for i, cid in enumerate(content_ids):
            key = self.states_key(cid, passages.ratio)
            if key in values:
                written.append(0)
                continue
            values[key] = passages.subset([i]).to_bytes(self.states)
            written.append(len(values[key]))
        try:
            self._store_call("writing passage states", lambda: self.store.put_many(values, pinned))
        except (StoreError, StoreFullError):
            if pinned:
                raise
            return [0] * len(written)
        self.stats.bytes_written += sum(written)
        for key, value in values.items():
            self.first_level.put(key, value)
        return written

    def pin(self, content_ids: Sequence[str], ratio: int) -> list[bool]:
        """Keeps stored states at `ratio` for good (an index run over what the documents path already stored);
        each id's answer says whether its states were there."""
        keys = [self.states_key(cid, ratio) for cid in content_ids]
        return self._store_call("pinning passage states", lambda: self.store.pin_many(keys))

    def aliases(self, user_ids: Sequence[str]) -> list[str | None]:
        """The content id each user id names now (None: none, or a corrupt alias, counted)."""
        names = []
        for value in self._fetch([self.alias_key(i) for i in user_ids], strict=True):
            cid = None if value is None else value.decode("ascii", "replace")
            if cid is not None and not is_content_id(cid):
                self.stats.corrupt += 1
                cid = None
            names.append(cid)
        return names

    def set_aliases(self, user_ids: Sequence[str], content_ids: Sequence[str]) -> list[int]:
        """Points each user id at its content id (kept for good); the bytes written per id."""
        values = {self.alias_key(u): c.encode() for u, c in zip(user_ids, content_ids)}
        self._store_call("writing passage ids", lambda: self.store.put_many(values, pinned=True))
        written = [len(k) + len(v) for k, v in values.items()]
        self.stats.bytes_written += sum(written)
        return written
