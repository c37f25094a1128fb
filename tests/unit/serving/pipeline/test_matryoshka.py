import numpy as np
import pytest

from nestrank.serving.pipeline.matryoshka import default_dimensions, l2_normalize, truncate_dimensions


def test_default_dimensions():
    assert default_dimensions(384) == (384, 256, 128, 64, 32)
    assert default_dimensions(768) == (768, 512, 256, 128, 64, 32)
    assert default_dimensions(64) == (64, 32)
    assert default_dimensions(32) == (32,)


def test_prefix_is_renormalised():
    rng = np.random.default_rng(1)
    x = l2_normalize(rng.normal(size=(5, 16)))
    out = truncate_dimensions(x, 4, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    # Same direction as the raw prefix.
    cos = np.sum(out * x[:, :4], axis=1) / np.linalg.norm(x[:, :4], axis=1)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-6)


def test_without_normalize_the_prefix_is_returned_as_is():
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(truncate_dimensions(x, 3, normalize=False), x[:, :3])


@pytest.mark.parametrize("dims", [0, 7, -1])
def test_out_of_range_dimensions_are_refused(dims):
    with pytest.raises(ValueError, match="dimensions must be in 1..6"):
        truncate_dimensions(np.ones((1, 6)), dims, True)
