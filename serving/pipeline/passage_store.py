"""Where pooled passage states live beyond one process: one small interface and three backends, picked by URL.

- `lmdb:///path[?map_size=16GiB]`, the embedded default: memory-mapped, shared by every process on the host,
  survives restarts. Capped at `map_size`: when it is nearly full, on-demand entries go oldest first; pinned
  ones (written by `nestrank index`) never.
- `redis://[:password@]host:port/db` for several replicas (`rediss://` with TLS, `redis+cluster://host:port` for
  a Redis Cluster): one pipelined round trip per batch, short socket timeouts, and single-key commands only, so
  every key works on a cluster. On-demand entries carry a TTL, so that Redis's `volatile-lru` policy evicts them
  and never the pinned ones (`maxmemory-policy volatile-lru`: README).
- `memory://`: this process only (tests).

Every URL takes `states=float16|int8` (default float16): how the reranker holds passage states there, and in its
first level (int8: half the bytes, one scale per group; its own key namespace, so the two never mix). The store
only carries the choice (`PassageStore.states`); keys and values are bytes, and what they mean (passages.py's
codec, the fingerprinted key layout) is the caller's.
"""

from __future__ import annotations

import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# The store's errors are kinds of the one error table: StoreError (an outage) is UNAVAILABLE, StoreFullError is 507.
from nestrank.protocol.errors import StoreError, StoreFullError
from nestrank.protocol.passages import STATE_FORMATS
from nestrank.protocol.reranking import STORE_PASSWORD_VARIABLE


class PassageStore(ABC):
    url: str  # for messages and metric labels: never carries a password
    states: str = "float16"  # how passage states are held here (the URL's `states` option; open_store sets it)

    @abstractmethod
    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Each key's value, or None; one round trip."""

    @abstractmethod
    def put_many(self, items: Mapping[bytes, bytes], pinned: bool) -> None:
        """Writes every item. Pinned items replace what a key held and are kept for good; on-demand ones (pinned
        False) never replace an existing value and may be evicted."""

    @abstractmethod
    def pin_many(self, keys: Sequence[bytes]) -> list[bool]:
        """Keeps the keys that exist for good; each key's answer says whether it existed."""

    @abstractmethod
    def delete_many(self, keys: Sequence[bytes]) -> None:
        """Removes the keys (a corrupt value, so that the next write replaces it)."""

    def close(self) -> None:
        pass


class MemoryStore(PassageStore):
    """A dict, for tests and single-process use; nothing is evicted."""

    def __init__(self):
        self.url = "memory://"
        self._values: dict[bytes, bytes] = {}
        self._pinned: set[bytes] = set()
        self._lock = threading.Lock()

    def get_many(self, keys):
        with self._lock:
            return [self._values.get(k) for k in keys]

    def put_many(self, items, pinned):
        with self._lock:
            for key, value in items.items():
                if pinned:
                    self._values[key] = value
                    self._pinned.add(key)
                else:
                    self._values.setdefault(key, value)

    def pin_many(self, keys):
        with self._lock:
            found = [k in self._values for k in keys]
            self._pinned.update(k for k, f in zip(keys, found) if f)
            return found

    def delete_many(self, keys):
        with self._lock:
            for key in keys:
                self._values.pop(key, None)
                self._pinned.discard(key)

    def entries(self) -> dict[str, int]:
        with self._lock:
            return {"pinned": len(self._pinned), "cached": len(self._values) - len(self._pinned)}


class LmdbStore(PassageStore):
    """An LMDB environment: `pinned` and `cached` databases, and `order` (insertion sequence → cached key) for
    evicting the oldest on-demand entries first. Every process on the host that opens the path shares it."""

    HIGH_WATER = 0.90  # evict on-demand entries when the used pages pass this share of map_size ...
    LOW_WATER = 0.80  # ... down to this share
    _SEQ_BYTES = 8  # a cached value is its big-endian insertion sequence number, then the value

    def __init__(self, path: str | Path, map_size: int = 16 << 30):
        self.path = Path(path).resolve()
        self.url = f"lmdb://{self.path}"
        self.map_size = map_size
        self.env = _open_lmdb(self.path, map_size)
        self.pinned = self.env.open_db(b"pinned")
        self.cached = self.env.open_db(b"cached")
        self.order = self.env.open_db(b"order")

    def _error(self, err: Exception) -> StoreError | StoreFullError:
        import lmdb

        if isinstance(err, lmdb.MapFullError):
            return StoreFullError(f"{self.url}: full (map_size {self.map_size} bytes holds only pinned passages); "
                                  "open it with a larger map_size")  # fmt: skip
        return StoreError(f"{self.url}: {type(err).__name__}: {err}")

    def get_many(self, keys):
        import lmdb

        try:
            with self.env.begin(buffers=True) as txn:
                values = []
                for key in keys:
                    value = txn.get(key, db=self.pinned)
                    if value is not None:
                        values.append(bytes(value))
                        continue
                    value = txn.get(key, db=self.cached)
                    values.append(None if value is None else bytes(value[self._SEQ_BYTES :]))
                return values
        except lmdb.Error as err:
            raise self._error(err) from None

    def put_many(self, items, pinned):
        import lmdb

        if not items:
            return
        for attempt in range(2):
            try:
                if not pinned:
                    self._evict(self.HIGH_WATER)
                with self.env.begin(write=True) as txn:
                    self._write(txn, items, pinned)
                return
            except lmdb.MapFullError as err:
                if attempt or not self._evict(self.LOW_WATER / 2):
                    raise self._error(err) from None
            except lmdb.Error as err:
                raise self._error(err) from None

    def _write(self, txn, items, pinned: bool) -> None:
        cursor = txn.cursor(db=self.order)
        seq = int.from_bytes(cursor.key(), "big") if cursor.last() else 0
        for key, value in items.items():
            if pinned:
                self._uncache(txn, key)
                txn.put(key, value, db=self.pinned)
            elif txn.get(key, db=self.pinned) is None and txn.get(key, db=self.cached) is None:
                seq += 1
                stamp = seq.to_bytes(self._SEQ_BYTES, "big")
                txn.put(key, stamp + value, db=self.cached)
                txn.put(stamp, key, db=self.order)

    def _uncache(self, txn, key: bytes) -> bytes | None:
        """Removes `key` from the on-demand databases; its value, if it was there."""
        value = txn.get(key, db=self.cached)
        if value is None:
            return None
        txn.delete(value[: self._SEQ_BYTES], db=self.order)
        txn.delete(key, db=self.cached)
        return value[self._SEQ_BYTES :]

    def pin_many(self, keys):
        import lmdb

        try:
            with self.env.begin(write=True) as txn:
                found = []
                for key in keys:
                    if txn.get(key, db=self.pinned) is not None:
                        found.append(True)
                        continue
                    value = self._uncache(txn, key)
                    if value is not None:
                        txn.put(key, value, db=self.pinned)
                    found.append(value is not None)
                return found
        except lmdb.Error as err:
            raise self._error(err) from None

    def delete_many(self, keys):
        import lmdb

        try:
            with self.env.begin(write=True) as txn:
                for key in keys:
                    txn.delete(key, db=self.pinned)
                    self._uncache(txn, key)
        except lmdb.Error as err:
            raise self._error(err) from None

    def used_bytes(self) -> int:
        with self.env.begin() as txn:
            return sum(self._pages(txn.stat(db)) for db in (self.pinned, self.cached, self.order)) * self._page_size

    @property
    def _page_size(self) -> int:
        return self.env.stat()["psize"]

    @staticmethod
    def _pages(stat: dict) -> int:
        return stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]

    def _evict(self, share: float) -> bool:
        """Drops the oldest on-demand entries until the used pages are under `share` of the map (LOW_WATER once
        HIGH_WATER is passed); whether anything went."""
        limit = share * self.map_size
        if self.used_bytes() <= limit:
            return False
        target = min(limit, self.LOW_WATER * self.map_size)
        evicted = False
        while self.used_bytes() > target:
            with self.env.begin(write=True) as txn:
                cursor = txn.cursor(db=self.order)
                if not cursor.first():
                    break
                for _ in range(64):  # a batch per transaction: the freed pages are reusable once it commits
                    txn.delete(cursor.value(), db=self.cached)
                    if not cursor.delete():
                        break
                    evicted = True
                    if cursor.key() == b"":
                        break
        return evicted

    def entries(self) -> dict[str, int]:
        with self.env.begin() as txn:
            return {"pinned": txn.stat(self.pinned)["entries"], "cached": txn.stat(self.cached)["entries"]}


_LMDB_ENVS: dict[Path, object] = {}  # LMDB allows one environment per path per process
_LMDB_LOCK = threading.Lock()


def _open_lmdb(path: Path, map_size: int):
    import lmdb

    with _LMDB_LOCK:
        env = _LMDB_ENVS.get(path)
        if env is None:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            # readahead off: random reads of a store larger than RAM; max_dbs: pinned, cached, order
            env = lmdb.open(str(path), map_size=map_size, max_dbs=3, readahead=False, meminit=False)
            env.reader_check()  # frees reader slots that crashed processes left behind
            _LMDB_ENVS[path] = env
        elif env.info()["map_size"] < map_size:
            env.set_mapsize(map_size)
        return env


class RedisStore(PassageStore):
    """Redis or Redis Cluster. A batch is one pipeline of single-key commands (GET, SET, PERSIST, EXISTS), which a
    cluster client splits by node, so keys need no hash tags."""

    def __init__(self, url: str, timeout_s: float = 0.5, cache_ttl_s: int = 7 * 86400):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = _without_password(url)
        self.cache_ttl_s = cache_ttl_s
        # One retry, at once: a pooled connection that a restarted server dropped fails once, then reconnects.
        options = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1))
        if url.startswith("redis+cluster://"):
            from redis.cluster import RedisCluster

            self.client = RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"), **options)
        else:
            self.client = redis.Redis.from_url(url, **options)

    def _run(self, commands) -> list:
        import redis

        pipeline = self.client.pipeline(transaction=False)
        for name, *args in commands:
            getattr(pipeline, name)(*args)
        try:
            return pipeline.execute()
        except redis.exceptions.ResponseError as err:
            if "OOM" in str(err):
                raise StoreFullError(f"{self.url}: full ({err}); raise maxmemory, and use maxmemory-policy "
                                     "volatile-lru so that on-demand entries make room") from None  # fmt: skip
            raise StoreError(f"{self.url}: {err}") from None
        except redis.exceptions.RedisError as err:
            raise StoreError(f"{self.url}: {type(err).__name__}: {err}") from None

    def get_many(self, keys):
        return self._run(("get", k) for k in keys) if keys else []

    def put_many(self, items, pinned):
        if not items:
            return
        if pinned:
            self._run(("set", k, v) for k, v in items.items())  # SET without EX clears any TTL: kept for good
        else:  # NX: never replace a value, nor give a pinned one a TTL
            self._run(("set", k, v, self.cache_ttl_s, None, True) for k, v in items.items())

    def pin_many(self, keys):
        if not keys:
            return []
        replies = self._run(command for k in keys for command in (("persist", k), ("exists", k)))
        return [bool(r) for r in replies[1::2]]

    def delete_many(self, keys):
        if keys:
            self._run(("delete", k) for k in keys)

    def close(self) -> None:
        self.client.close()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else f":***@{host}"
    return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


_SIZE = re.compile(r"([0-9]+)\s*([KMGT]i?B?)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """ "16GiB", "512M", "1073741824" → bytes (binary units)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 16GiB, 512MiB)")
    return int(match.group(1)) * _UNITS[(match.group(2) or "")[:1].lower()]


def default_passage_store() -> str:
    """The store a reranker uses when its config names none (`passage_store` ""), in `nestrank serve` and in the
    model alike: LMDB in the serving user's cache directory, persistent and shared by every server on the host
    (keys carry each model's passage fingerprint, so models never mix)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return f"lmdb://{(cache / 'nestrank' / 'passages').resolve()}"


def configured_store(url: str) -> str:
    """A reranker's `passage_store` as it opens it: "" is the default store; a password the launcher wrote as ***
    (configs never hold one) is the one it put in the environment."""
    url = url or default_passage_store()
    parts = urlsplit(url)
    password = os.environ.get(STORE_PASSWORD_VARIABLE)
    if parts.password != "***" or not password:
        return url
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user.rsplit(':', 1)[0]}:{password}@{host}"))


def states_option(url: str) -> str:
    """The URL's `states` option: float16 (the default) or int8."""
    states = dict(parse_qsl(urlsplit(url).query)).get("states", "float16")
    if states not in STATE_FORMATS:
        raise ValueError(f"passage store {_without_password(url)!r}: states={states}; choose one of "
                         f"{', '.join(STATE_FORMATS)}")  # fmt: skip
    return states


def with_states(url: str, states: str) -> str:
    """`url` holding passage states as `states` (what `nestrank serve --passage-states` does); a URL that already
    names another format is refused, rather than one of the two silently winning."""
    if states not in STATE_FORMATS:
        raise ValueError(f"--passage-states {states}: choose one of {', '.join(STATE_FORMATS)}")
    base, _, query = url.partition("?")  # by hand: urlunsplit would turn lmdb:///path into lmdb:/path
    options = dict(parse_qsl(query))
    if options.get("states", states) != states:
        raise ValueError(f"passage store {_without_password(url)!r} says states={options['states']}, and "
                         f"--passage-states says {states}: give one")  # fmt: skip
    return f"{base}?{urlencode({**options, 'states': states})}"


def open_store(url: str) -> PassageStore:
    """`memory://`, `lmdb:///path?map_size=16GiB`, `redis://host:port/db?timeout_s=0.5&cache_ttl_s=604800` (also
    `rediss://` and `redis+cluster://`; other query options are redis-py's own); each with `states=float16|int8`."""
    parts = urlsplit(url)
    states = states_option(url)
    query = dict(parse_qsl(parts.query))
    query.pop("states", None)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if query:
            raise ValueError(f"passage store {url!r}: unknown options {sorted(query)}; known: states")
        store = MemoryStore()
    elif scheme == "lmdb":
        if not parts.path.startswith("/") or parts.netloc:
            raise ValueError(f"passage store {url!r}: give an absolute path, lmdb:///path/to/dir")
        map_size = parse_bytes(query.pop("map_size", "16GiB"))
        if query:
            raise ValueError(f"passage store {url!r}: unknown options {sorted(query)}; known: map_size, states")
        store = LmdbStore(parts.path, map_size)
    elif scheme in ("redis", "rediss", "redis+cluster"):
        settings = {"timeout_s": float(query.pop("timeout_s", 0.5)),
                    "cache_ttl_s": int(query.pop("cache_ttl_s", 7 * 86400))}  # fmt: skip
        store = RedisStore(urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items()))),
                           **settings)  # fmt: skip
    else:
        raise ValueError(f"passage store {url!r}: the scheme must be memory, lmdb, redis, rediss or redis+cluster")
    store.states = states
    return store
