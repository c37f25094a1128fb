import numpy as np
import pytest

from nestrank.protocol.passages import PassageStates
from nestrank.serving.pipeline import mep


def test_mean_over_groups_with_a_partial_last_group():
    states = np.arange(5, dtype=np.float32).reshape(1, 5, 1)  # tokens 0..4, L not a multiple of r
    pooled, counts = mep.pool(states, np.ones((1, 5), np.int64), 2)
    assert pooled[0, :, 0].tolist() == [0.5, 2.5, 4.0]
    assert counts[0].tolist() == [2, 2, 1]


def test_padding_is_excluded_and_empty_groups_are_invalid():
    states = np.array([[[1.0], [3.0], [100.0], [100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0, 0]])
    pooled, counts = mep.pool(states, mask, 2)
    assert pooled[0, 0, 0] == 2.0 and counts[0].tolist() == [2, 0]
    trimmed = PassageStates.from_padded(pooled, counts, 2)
    assert trimmed.states.shape == (1, 1) and trimmed.counts.tolist() == [2]


def test_passage_shorter_than_the_ratio_is_one_group():
    states = np.random.default_rng(0).normal(size=(1, 3, 4)).astype(np.float32)
    pooled, counts = mep.pool(states, np.ones((1, 3)), 32)
    np.testing.assert_allclose(pooled[0, 0], states[0].mean(axis=0), rtol=1e-6)
    assert counts.tolist() == [[3]]


@pytest.mark.parametrize("stored, target", [(1, 2), (2, 8), (4, 8), (4, 32), (8, 16)])
def test_repooling_stored_states_equals_direct_pooling(stored, target):
    rng = np.random.default_rng(stored * 100 + target)
    states = rng.normal(size=(3, 61, 8)).astype(np.float32)
    mask = np.ones((3, 61), np.int64)
    mask[1, 40:] = 0
    mask[2, 7:] = 0
    direct, direct_counts = mep.pool(states, mask, target)
    coarse, coarse_counts = mep.pool(states, mask, stored)
    repooled, repooled_counts = mep.repool(coarse, coarse_counts, target // stored)
    np.testing.assert_array_equal(repooled_counts, direct_counts)
    np.testing.assert_allclose(repooled, direct, rtol=1e-5, atol=1e-6)


def test_passages_at_a_coarser_ratio_are_rounded_once_from_exact_means():
    rng = np.random.default_rng(7)
    states = rng.normal(size=(2, 37, 8)).astype(np.float32)
    mask = np.ones((2, 37), np.int64)
    mask[1, 20:] = 0
    stored = PassageStates.from_padded(*mep.pool(states, mask, 4), 4, fingerprint="a" * 32)
    coarse = mep.at_ratio(stored, 16)
    direct_states, direct_counts = mep.pool(states, mask, 16)
    expected = PassageStates.from_padded(direct_states, direct_counts, 16)
    assert (coarse.ratio, coarse.fingerprint) == (16, "a" * 32) and coarse.states.dtype == np.float16
    np.testing.assert_array_equal(coarse.counts, expected.counts)
    # from float16 means re-pooled: within float16 rounding of the direct pooling
    np.testing.assert_allclose(coarse.states.astype(np.float32), expected.states.astype(np.float32), rtol=2e-3,
                               atol=2e-3)  # fmt: skip
    assert mep.at_ratio(stored, 4) is stored
    with pytest.raises(ValueError, match="not a multiple of the stored ratio 4"):
        mep.at_ratio(stored, 2)
