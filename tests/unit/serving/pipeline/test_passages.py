"""A reranker's passages across the first level and the store: keys that cannot mix models, one batched fetch, exact
re-pooling from a finer stored ratio, corrupt values read as misses, aliases, outages that say which store, and int8
states in their own key namespace, held as int8 by the first level and served through real stores."""

import numpy as np
import pytest

from nestrank.bench.redis_process import RedisServer
from nestrank.protocol.errors import StoreError, StoreFullError, UnavailableError
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import passage_id
from nestrank.serving.pipeline.mep import at_ratio
from nestrank.serving.pipeline.passage_cache import PassageCache, entry_bytes
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


# -- int8 states -------------------------------------------------------------------------------------------------


def test_int8_and_float16_states_of_one_passage_never_collide():
    store = MemoryStore()
    ids = [passage_id(f"doc {i}") for i in range(3)]
    passages = encoded(3, width=64)
    halves, fulls = tiers(store), Passages(MODEL, RATIOS, PassageCache(1 << 24), store, states="int8")
    assert fulls.states == "int8" and halves.states == "float16"
    fulls.put(ids, passages, pinned=True)
    assert tiers(store).get(ids, 4, strict=True) == {}  # a float16 reader does not see int8 values ...
    halves.put(ids, passages, pinned=True)
    keys = {halves.states_key(cid, 4) for cid in ids} | {fulls.states_key(cid, 4) for cid in ids}
    assert len(keys) == 6 and set(store._values) == keys  # ... nor overwrite them: both are there
    assert fulls.states_key(ids[0], 4) == f"nrps:{MODEL}:4:i8:{ids[0]}".encode()
    for reader, states in ((tiers(store), "float16"), (Passages(MODEL, RATIOS, PassageCache(0), store, states="int8"),
                                                        "int8")):  # fmt: skip
        found = reader.get(ids, 4, strict=True)
        for i, cid in enumerate(ids):
            np.testing.assert_array_equal(found[cid].states, passages.subset([i]).as_stored(states).states)
    # A value that is not what its key promises (int8 under a float16 key) is a counted miss, then removed.
    store.put_many({halves.states_key(ids[0], 4): store.get_many([fulls.states_key(ids[0], 4)])[0]}, pinned=True)
    reader = tiers(store)
    assert list(reader.get(ids, 4, strict=True)) == ids[1:] and reader.stats.corrupt == 1


def test_the_first_level_holds_int8_values_at_their_size():
    ids = [passage_id(f"doc {i}") for i in range(20)]
    passages = encoded(20, width=640)
    held = {}
    for states in ("float16", "int8"):
        writer = Passages(MODEL, RATIOS, PassageCache(1 << 26), MemoryStore(), states=states)
        writer.put(ids, passages, pinned=False)
        cache = writer.first_level
        values = [cache.get(writer.states_key(cid, 4)) for cid in ids]
        assert cache.stats.bytes == sum(entry_bytes(writer.states_key(c, 4), v) for c, v in zip(ids, values))
        assert all(PassageStates.from_bytes(v, MODEL, 4, states=states) for v in values)  # held as stored
        held[states] = cache.stats.bytes
        found = writer.get(ids, 8, strict=True)  # a first-level hit decodes (and re-pools) to float16
        assert writer.first_level.stats.hits == 20 and found[ids[0]].states.dtype == np.float16
    # H + 8 bytes a group (states, scale, count) against 2H + 4, plus the same key, header and slot per entry
    assert 0.5 < held["int8"] / held["float16"] < 0.53


@pytest.mark.parametrize("backend", ["memory", "lmdb", "redis"])
def test_int8_states_are_served_through_real_stores(backend, tmp_path, request):
    url = {"memory": "memory://", "lmdb": f"lmdb://{tmp_path}/store?map_size=64MiB"}.get(backend)
    url = (url or request.getfixturevalue("redis_server").url) + ("&" if "?" in (url or "") else "?") + "states=int8"
    store = open_store(url)
    assert store.states == "int8"
    ids = [passage_id(f"{backend} {tmp_path} {i}") for i in range(4)]  # the session's redis is shared
    passages = encoded(4, ratio=2, width=64)
    written = tiers(store).put(ids, passages, pinned=True)  # the store's choice, from its URL
    assert written == [len(passages.subset([i]).to_bytes("int8")) for i in range(4)]
    reader = tiers(store, first_level_bytes=0)
    for ratio in (2, 8):  # as stored, and re-pooled exactly from the stored int8 states
        found = reader.get(ids, ratio, strict=True)
        for i, cid in enumerate(ids):
            expected = at_ratio(passages.subset([i]).as_stored("int8"), ratio)
            np.testing.assert_array_equal(found[cid].states, expected.states)
    assert reader.stats.hits == 8 and reader.stats.corrupt == 0
    assert reader.stats.bytes_read == 2 * sum(written)
