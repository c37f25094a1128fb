import numpy as np
import pytest

from nestrank.serving import mep
from nestrank.serving.passage_cache import PassageCache, passage_id
from nestrank.serving.reranker import PooledPassage


def passage(length: int, ratio: int, seed: int = 0) -> PooledPassage:
    states = np.random.default_rng(seed).normal(size=(1, length, 4)).astype(np.float32)
    pooled, counts = mep.pool(states, np.ones((1, length)), ratio)
    return PooledPassage(pooled[0], counts[0], ratio)


def test_hits_misses_and_bytes():
    cache = PassageCache(max_bytes=10_000)
    assert cache.get("a", 4) is None
    p = passage(16, 4)
    cache.put("a", p)
    assert cache.get("a", 4) is p
    assert (cache.stats.hits, cache.stats.misses, cache.stats.bytes, cache.stats.entries) == (1, 1, p.nbytes, 1)


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
    one = passage(16, 4)
    cache = PassageCache(max_bytes=2 * one.nbytes)
    for key in "abc":
        cache.put(key, passage(16, 4))
    assert cache.stats.evictions == 1 and cache.stats.bytes <= 2 * one.nbytes
    assert cache.get("a", 4) is None and cache.get("c", 4) is not None


def test_recently_used_entries_survive():
    one = passage(16, 4)
    cache = PassageCache(max_bytes=2 * one.nbytes)
    cache.put("a", passage(16, 4))
    cache.put("b", passage(16, 4))
    cache.get("a", 4)
    cache.put("c", passage(16, 4))
    assert cache.get("a", 4) is not None and cache.get("b", 4) is None


def test_zero_capacity_stores_nothing():
    cache = PassageCache(max_bytes=0)
    cache.put("a", passage(8, 4))
    assert cache.stats.entries == 0
    with pytest.raises(ValueError):
        PassageCache(-1)


def test_passage_id_is_a_stable_content_hash():
    assert passage_id("hello") == passage_id("hello") != passage_id("hello!")
    assert len(passage_id("x")) == 32
