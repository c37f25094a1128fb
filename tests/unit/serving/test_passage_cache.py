import numpy as np
import pytest

from nestrank.protocol.reranking import passage_id
from nestrank.serving import mep
from nestrank.serving.passage_cache import PassageCache, entry_bytes
from nestrank.serving.reranker import PooledPassage


def passage(length: int, ratio: int, seed: int = 0) -> PooledPassage:
    states = np.random.default_rng(seed).normal(size=(1, length, 4)).astype(np.float32)
    pooled, counts = mep.pool(states, np.ones((1, length)), ratio)
    return PooledPassage(pooled[0], counts[0], ratio)


def cost(length: int = 16, ratio: int = 4) -> int:
    """What the cache counts for one such passage (it keeps copies that own their buffers)."""
    p = passage(length, ratio)
    return entry_bytes(("a" * 32, ratio), PooledPassage(p.states.copy(), p.counts.copy(), ratio))


def test_hits_misses_and_bytes():
    cache = PassageCache(max_bytes=10_000)
    assert cache.get("a" * 32, 4) is None
    p = passage(16, 4)
    cache.put("a" * 32, p)
    got = cache.get("a" * 32, 4)
    np.testing.assert_array_equal(got.states, p.states)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.entries) == (1, 1, 1)
    assert abs(cache.stats.bytes - cost()) <= 32  # an instance dict's size varies by a few bytes
    assert cache.stats.bytes > p.nbytes + 500  # the objects around the arrays count too


def test_the_bound_counts_what_entries_really_hold():
    """tracemalloc's measure of 2,000 cached passages, views of padded batches among them, against the count."""
    import tracemalloc

    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(8, 40, 64)).astype(np.float32) for _ in range(250)]
    tracemalloc.start()
    cache = PassageCache(max_bytes=1 << 30)
    before = tracemalloc.get_traced_memory()[0]
    for b, batch in enumerate(batches):
        for row in range(8):  # the BLS unstacks a padded batch: each passage starts as a view of it
            size = int(rng.integers(1, 41))
            cache.put(passage_id(f"{b}-{row}"), PooledPassage(batch[row, :size], np.ones(size, np.int32), 4))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del batches  # the cache must not need them
    assert abs(held - cache.stats.bytes) / held < 0.1, (held, cache.stats.bytes)


def test_a_coarser_ratio_is_served_exactly_from_stored_states():
    cache = PassageCache(max_bytes=10_000)
    cache.put("a", passage(37, 4, seed=1))
    got = cache.get("a", 16)
    direct = passage(37, 16, seed=1)
    assert got.ratio == 16
    np.testing.assert_allclose(got.states, direct.states, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.counts, direct.counts)
    assert cache.get("a", 2) is None  # finer than stored: not derivable


def test_lru_eviction_keeps_the_byte_bound():
    cache = PassageCache(max_bytes=2 * cost())
    for key in "abc":
        cache.put(key * 32, passage(16, 4))
    assert cache.stats.evictions == 1 and cache.stats.bytes <= 2 * cost()
    assert cache.get("a" * 32, 4) is None and cache.get("c" * 32, 4) is not None


def test_recently_used_entries_survive():
    cache = PassageCache(max_bytes=2 * cost())
    cache.put("a" * 32, passage(16, 4))
    cache.put("b" * 32, passage(16, 4))
    cache.get("a" * 32, 4)
    cache.put("c" * 32, passage(16, 4))
    assert cache.get("a" * 32, 4) is not None and cache.get("b" * 32, 4) is None


def test_zero_capacity_stores_nothing():
    cache = PassageCache(max_bytes=0)
    cache.put("a", passage(8, 4))
    assert cache.stats.entries == 0
    with pytest.raises(ValueError):
        PassageCache(-1)


def test_passage_id_is_a_stable_content_hash():
    assert passage_id("hello") == passage_id("hello") != passage_id("hello!")
    assert len(passage_id("x")) == 32
