import numpy as np
import pytest

from nestrank.serving.batching import length_buckets, split_by_length


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
    # Sorted: padding waste stays small compared with arrival order.
    sorted_cost = sum(len(b) * max(lengths[i] for i in b) for b in buckets)
    assert sorted_cost < 1.2 * sum(lengths)


def test_an_item_longer_than_the_budget_gets_its_own_bucket():
    buckets = length_buckets([5, 5000, 5], max_batch=8, max_tokens=100)
    assert [b.tolist() for b in buckets] == [[0, 2], [1]]


def test_split_by_length_sorts_then_cuts():
    chunks = split_by_length([30, 10, 20, 40, 5], batch_size=2)
    assert [c.tolist() for c in chunks] == [[4, 1], [2, 0], [3]]


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        length_buckets([1], max_batch=0, max_tokens=10)
