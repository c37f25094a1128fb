import numpy as np
import pytest
from sentence_transformers import quantize_embeddings

from nestrank.protocol.embedding import OUTPUT_DTYPES, PRECISIONS, output_width, unpack_binary
from nestrank.serving.pipeline.quantization import calibration_ranges, quantize


@pytest.fixture
def embeddings():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 40)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_matches_sentence_transformers_with_the_same_ranges(embeddings, precision):
    ranges = calibration_ranges(embeddings[:30])
    ours = quantize(embeddings, precision, ranges)
    theirs = quantize_embeddings(embeddings, precision, ranges=ranges)
    assert ours.dtype == theirs.dtype == OUTPUT_DTYPES[precision]
    np.testing.assert_array_equal(ours, theirs)


def test_float16_is_a_cast(embeddings):
    out = quantize(embeddings, "float16")
    assert out.dtype == np.float16
    np.testing.assert_allclose(out, embeddings, atol=1e-3)


def test_values_outside_the_calibration_range_saturate(embeddings):
    ranges = calibration_ranges(embeddings)
    out = quantize(np.stack([ranges[0] - 1, ranges[1] + 1]), "int8", ranges)
    assert (out[0] == -128).all() and (out[1] == 127).all()


def test_packed_binary_layout_is_msb_first_and_signed_offset():
    x = np.array([[1, -1, -1, -1, -1, -1, -1, 1, 1, -1]], dtype=np.float32)  # 10 dims → 2 bytes
    ubinary = quantize(x, "ubinary")
    assert ubinary.tolist() == [[0b10000001, 0b10000000]]
    binary = quantize(x, "binary")
    assert binary.tolist() == [[0b10000001 - 128, 0b10000000 - 128]]
    np.testing.assert_array_equal(unpack_binary(ubinary, 10)[0], (x[0] > 0).astype(np.uint8))
    np.testing.assert_array_equal(unpack_binary(binary, 10)[0], (x[0] > 0).astype(np.uint8))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_output_width(embeddings, precision):
    ranges = calibration_ranges(embeddings)
    assert quantize(embeddings, precision, ranges).shape == (50, output_width(precision, 40))


def test_int8_without_ranges_is_refused(embeddings):
    with pytest.raises(ValueError, match="calibration ranges"):
        quantize(embeddings, "int8")


def test_unknown_precision_is_refused(embeddings):
    with pytest.raises(ValueError, match="precision must be one of"):
        quantize(embeddings, "int4")
