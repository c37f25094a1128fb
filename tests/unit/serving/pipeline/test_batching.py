import numpy as np
import pytest

from nestrank.clients.chunking import split_by_length
from nestrank.serving.pipeline.batching import length_buckets


@pytest.mark.parametrize("seed", range(5))
def test_buckets_cover_every_index_once_within_limits(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=500).tolist()
    buckets = length_buckets(lengths, max_batch=32, max_tokens=2048)
    flat = np.concatenate(buckets)
    assert sorted(flat.tolist()) == list(range(500))
    for bucket in buckets:
        assert len(bucket) <= 32
        padded = len(bucket) * max(lengths[i] for i in bucket)
        assert padded <= 2048 or len(bucket) == 1
    # Bounded padding: each batch is at least 90% real tokens or smaller than 512 padded tokens.
    for bucket in buckets:
        padded = len(bucket) * max(lengths[i] for i in bucket)
        assert sum(lengths[i] for i in bucket) >= 0.9 * padded or padded <= 512 or len(bucket) == 1


def test_mixed_lengths_do_not_share_a_batch():
    buckets = length_buckets([10] * 20 + [200] * 20, max_batch=64, max_tokens=100_000)
    assert all(len({int(i) < 20 for i in bucket}) == 1 for bucket in buckets)
    assert sorted(len(b) for b in buckets) == [20, 20]


def test_an_item_longer_than_the_budget_gets_its_own_bucket():
    buckets = length_buckets([5, 5000, 5], max_batch=8, max_tokens=100)
    assert [b.tolist() for b in buckets] == [[0, 2], [1]]


def test_split_by_length_sorts_then_cuts():
    chunks = split_by_length([30, 10, 20, 40, 5], batch_size=2)
    assert [c.tolist() for c in chunks] == [[4, 1], [2, 0], [3]]


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        length_buckets([1], max_batch=0, max_tokens=10)
