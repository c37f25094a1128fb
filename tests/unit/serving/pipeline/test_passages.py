"""A reranker's passages across the first level and the store: keys that cannot mix models, one batched fetch, exact
re-pooling from a finer stored ratio, corrupt values read as misses, aliases, and outages that say which store."""

import numpy as np
import pytest

from nestrank.bench.redis_process import RedisServer
from nestrank.protocol.errors import StoreError, StoreFullError, UnavailableError
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import passage_id
from nestrank.serving.pipeline.mep import at_ratio
from nestrank.serving.pipeline.passage_cache import PassageCache
from nestrank.serving.pipeline.passage_store import MemoryStore, open_store
from nestrank.serving.pipeline.passage_tiers import Passages

MODEL, OTHER_MODEL = "a" * 32, "b" * 32
RATIOS = (1, 2, 4, 8, 16, 32)


def encoded(n, ratio=4, seed=0, fingerprint=MODEL, width=16):
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n):
        groups = int(rng.integers(1, 12))
        counts = np.full(groups, ratio)
        counts[-1] = rng.integers(1, ratio + 1)
        parts.append((rng.normal(size=(groups, width)), counts))
    return PassageStates.from_passages(parts, ratio, fingerprint=fingerprint)


class CountingStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.fetches = 0

    def get_many(self, keys):
        self.fetches += 1
        return super().get_many(keys)


def tiers(store, fingerprint=MODEL, first_level_bytes=1 << 24):
    return Passages(fingerprint, RATIOS, PassageCache(first_level_bytes), store)


def test_a_second_replica_reads_what_the_first_wrote_in_one_fetch():
    store = CountingStore()
    ids = [passage_id(f"doc {i}") for i in range(5)]
    passages = encoded(5)
    tiers(store).put(ids, passages, pinned=False)
    replica = tiers(store)
    found = replica.get(ids, 4, strict=True)
    assert store.fetches == 1 and replica.stats.hits == 5 and replica.first_level.stats.misses == 5
    for i, cid in enumerate(ids):
        np.testing.assert_array_equal(found[cid].states, passages.passage(i)[0])
    replica.get(ids, 4, strict=True)
    assert store.fetches == 1 and replica.first_level.stats.hits == 5  # the first level answered


def test_a_coarser_ratio_is_re_pooled_from_the_finer_stored_states():
    store = CountingStore()
    ids = [passage_id(f"doc {i}") for i in range(3)]
    passages = encoded(3, ratio=2)
    tiers(store).put(ids, passages, pinned=True)
    found = tiers(store).get(ids, 8, strict=True)
    assert store.fetches == 2  # ratio 8 first, then its divisors 4, 2, 1 in one more
    for i, cid in enumerate(ids):
        expected = at_ratio(passages.subset([i]), 8)
        assert found[cid].ratio == 8
        np.testing.assert_array_equal(found[cid].states, expected.states)
    assert tiers(store).get(ids, 1, strict=True) == {}  # ratio 2 cannot serve ratio 1


def test_another_model_never_reads_these_states():
    store = MemoryStore()
    ids = [passage_id("doc")]
    tiers(store).put(ids, encoded(1), pinned=True)
    assert tiers(store, OTHER_MODEL).get(ids, 4, strict=True) == {}


def test_a_corrupt_value_is_a_miss_and_counted(tmp_path):
    store = open_store(f"lmdb://{tmp_path}/store")
    ids = [passage_id("doc 0"), passage_id("doc 1")]
    writer = tiers(store)
    writer.put(ids, encoded(2), pinned=True)
    key = writer.states_key(ids[1], 4)
    with store.env.begin(write=True) as txn:  # flip one byte of the stored states
        value = bytearray(txn.get(key, db=store.pinned))
        value[-5] ^= 0x40
        txn.put(key, bytes(value), db=store.pinned)
    reader = tiers(store)
    found = reader.get(ids, 4, strict=True)
    assert list(found) == [ids[0]] and reader.stats.corrupt == 1 and reader.stats.misses == 1
    assert store.get_many([key]) == [None]  # removed: the next write of the passage replaces it
    reader.put(ids[1:], encoded(2).subset([1]), pinned=False)
    assert list(tiers(store).get(ids, 4, strict=True)) == ids


def test_user_ids_are_aliases_and_content_ids_still_work():
    passages = tiers(MemoryStore())
    first, second = passage_id("first text"), passage_id("second text")
    passages.set_aliases(["doc-17", "doc-18"], [first, first])
    assert passages.resolve(["doc-17", "doc-18", second, "nobody"]) == [first, first, second, None]
    passages.set_aliases(["doc-17"], [second])  # indexed again with other text
    assert passages.resolve(["doc-17"]) == [second]
    assert tiers(MemoryStore(), OTHER_MODEL).resolve(["doc-17"]) == [None]


def test_an_outage_is_unavailable_for_ids_and_a_counted_miss_for_documents(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    try:
        passages = tiers(open_store(redis.url + "?timeout_s=0.3"), first_level_bytes=0)
        ids = [passage_id("doc")]
        passages.put(ids, encoded(1), pinned=True)
    finally:
        redis.kill()
    with pytest.raises(StoreError, match=f"^passage store unavailable: reading passage states: {redis.url}") as caught:
        passages.get(ids, 4, strict=True)
    assert isinstance(caught.value, UnavailableError) and caught.value.grpc_code == "UNAVAILABLE"
    with pytest.raises(UnavailableError, match=redis.url):
        passages.resolve(["doc-1"])
    assert passages.get(ids, 4, strict=False) == {}
    assert passages.put(ids, encoded(1), pinned=False) == [0]  # the answer goes out; the failure is counted
    with pytest.raises(UnavailableError):
        passages.put(ids, encoded(1), pinned=True)
    assert passages.stats.errors == 5


def test_a_full_store_refuses_pinned_writes_as_store_full_not_a_500(tmp_path):
    passages = tiers(open_store(f"lmdb://{tmp_path}/tiny?map_size=1MiB"))
    big = encoded(200, seed=3, width=640)  # about 1.5 MB of states
    with pytest.raises(StoreFullError, match="^passage store full: writing passage states: .*larger map_size") as c:
        passages.put([passage_id(f"doc {i}") for i in range(200)], big, pinned=True)
    assert (c.value.http_status, c.value.retry) == (507, "no") and not isinstance(c.value, UnavailableError)
