"""The one passage-state type and codec: the wire's padding, the store's values (header, checksum, no copies, no
pickle), and .npz files with the model's fingerprint."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nestrank.protocol.passages import HEADER_BYTES, CorruptStates, PassageStates

FINGERPRINT = "0123456789abcdef" * 2
OTHER = "f" * 32


def passages(seed=0, sizes=(3, 1, 5), ratio=4, ids=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    parts = [(rng.normal(size=(n, 4)), rng.integers(1, ratio + 1, size=n)) for n in sizes]
    return PassageStates.from_passages(parts, ratio, ids, FINGERPRINT)


def test_states_are_float16_and_the_wire_pads_with_zero_counts():
    held = passages()
    assert held.states.dtype == np.float16 and held.counts.dtype == np.int32 and list(held.lengths) == [3, 1, 5]
    states, counts = held.padded()
    assert states.shape == (3, 5, 4) and counts.shape == (3, 5) and (counts[1, 1:] == 0).all()
    again = PassageStates.from_padded(states, counts, 4, held.ids, FINGERPRINT)
    np.testing.assert_array_equal(again.states, held.states)
    np.testing.assert_array_equal(again.offsets, held.offsets)
    picked = PassageStates.from_padded(*held.padded([2, 0]), 4)
    np.testing.assert_array_equal(picked.passage(0)[0], held.passage(2)[0])


def test_npz_files_keep_the_fingerprint_and_older_files_load_without_one(tmp_path):
    held = passages()
    held.save(tmp_path / "p.npz")
    loaded = PassageStates.load(tmp_path / "p.npz")
    assert (loaded.ratio, loaded.ids, loaded.fingerprint) == (4, ("a", "b", "c"), FINGERPRINT)
    np.testing.assert_array_equal(loaded.states, held.states)
    np.savez(tmp_path / "old.npz", states=held.states, counts=held.counts, offsets=held.offsets, ratio=4,
             ids=np.array(held.ids))  # fmt: skip  # as nestrank 0.1 wrote them
    assert PassageStates.load(tmp_path / "old.npz").fingerprint == ""


def test_subsets_and_concatenation_keep_ids_and_model():
    held = passages()
    joined = PassageStates.concat([held.subset([1]), held.subset([0, 2])])
    assert joined.ids == ("b", "a", "c") and joined.fingerprint == FINGERPRINT
    np.testing.assert_array_equal(joined.passage(2)[0], held.passage(2)[0])
    with pytest.raises(ValueError, match="different ratios or models"):
        PassageStates.concat([held, PassageStates.from_passages([held.passage(0)], 4, fingerprint=OTHER)])


def test_a_value_decodes_without_copies_to_the_same_passages():
    held = passages(ids=())
    value = held.to_bytes()
    decoded = PassageStates.from_bytes(value, FINGERPRINT, 4)
    for array, expected in ((decoded.states, held.states), (decoded.counts, held.counts),
                            (decoded.offsets, held.offsets)):  # fmt: skip
        np.testing.assert_array_equal(array, expected)
        assert np.shares_memory(array, np.frombuffer(value, np.uint8))  # views of the value: no copy
    assert (decoded.ratio, decoded.fingerprint, len(decoded)) == (4, FINGERPRINT, 3)
    assert len(value) == HEADER_BYTES + 8 * 4 + 4 * 9 + 2 * 9 * 4


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda v: v[:-1], "header promises"),
        (lambda v: v[:20], "shorter than the header"),
        (lambda v: b"XXXX" + v[4:], "not a passage-state value"),
        (lambda v: v[:4] + bytes([9]) + v[5:], "not a passage-state value"),  # a future version
        (lambda v: v[:-3] + bytes([v[-3] ^ 1]) + v[-2:], "checksum"),
    ],
)
def test_a_damaged_value_is_refused(damage, message):
    with pytest.raises(CorruptStates, match=message):
        PassageStates.from_bytes(damage(passages(ids=()).to_bytes()), FINGERPRINT, 4)


def test_a_value_of_another_model_or_ratio_is_refused():
    value = passages(ids=()).to_bytes()
    with pytest.raises(CorruptStates, match="passage fingerprint"):
        PassageStates.from_bytes(value, OTHER, 4)
    with pytest.raises(CorruptStates, match="ratio 4, not 8"):
        PassageStates.from_bytes(value, FINGERPRINT, 8)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_any_flipped_byte_is_refused_or_harmless(position, flip):
    """A flipped byte either fails the header or the checksum, or lands where it changes nothing (the reserved
    bytes): it never decodes to other states."""
    held = passages(ids=())
    value = bytearray(held.to_bytes())
    position %= len(value)
    value[position] ^= flip
    try:
        decoded = PassageStates.from_bytes(bytes(value), FINGERPRINT, 4)
    except CorruptStates:
        return
    assert HEADER_BYTES - 4 <= position < HEADER_BYTES
    np.testing.assert_array_equal(decoded.states, held.states)
    np.testing.assert_array_equal(decoded.counts, held.counts)
