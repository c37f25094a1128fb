"""The one passage-state type and codec: the wire's padding, the store's values (header, checksum, no copies, no
pickle; float16 or int8 with a scale per group), and .npz files with the model's fingerprint."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nestrank.protocol.passages import HEADER_BYTES, CorruptStates, PassageStates, quantize_int8

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
@pytest.mark.parametrize("states", ["float16", "int8"])
def test_a_damaged_value_is_refused(damage, message, states):
    with pytest.raises(CorruptStates, match=message):
        PassageStates.from_bytes(damage(passages(ids=()).to_bytes(states)), FINGERPRINT, 4)


def test_a_value_of_another_model_or_ratio_is_refused():
    value = passages(ids=()).to_bytes()
    with pytest.raises(CorruptStates, match="passage fingerprint"):
        PassageStates.from_bytes(value, OTHER, 4)
    with pytest.raises(CorruptStates, match="ratio 4, not 8"):
        PassageStates.from_bytes(value, FINGERPRINT, 8)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), flip=st.integers(1, 255), states=st.sampled_from(["float16", "int8"]))
def test_any_flipped_byte_is_refused_or_harmless(position, flip, states):
    """A flipped byte either fails the header or the checksum, or lands where it changes nothing (the reserved
    bytes): it never decodes to other states."""
    held = passages(ids=()).as_stored(states)
    value = bytearray(held.to_bytes(states))
    position %= len(value)
    value[position] ^= flip
    try:
        decoded = PassageStates.from_bytes(bytes(value), FINGERPRINT, 4)
    except CorruptStates:
        return
    assert HEADER_BYTES - 4 <= position < HEADER_BYTES
    np.testing.assert_array_equal(decoded.states, held.states)
    np.testing.assert_array_equal(decoded.counts, held.counts)


# -- int8 ------------------------------------------------------------------------------------------------------

# A value the codec wrote before int8 existed (nestrank at 0a992f7): one passage, groups [0.5, -1.25, 2, 0] and
# [3, -0.125, 1.5, -2.5] with counts 4 and 2, ratio 4.
OLD_FLOAT16_VALUE = bytes.fromhex(
    "4e525053010104000100000002000000040000000600000070527d460123456789abcdef0123456789abcdef00000000"
    "000000000000000002000000000000000400000002000000003800bd00400000004200b0003e00c1"
)


def test_values_written_before_int8_still_decode():
    decoded = PassageStates.from_bytes(OLD_FLOAT16_VALUE, FINGERPRINT, 4, states="float16")
    np.testing.assert_array_equal(decoded.states, [[0.5, -1.25, 2.0, 0.0], [3.0, -0.125, 1.5, -2.5]])
    assert list(decoded.counts) == [4, 2] and decoded.states.dtype == np.float16
    assert decoded.to_bytes() == OLD_FLOAT16_VALUE  # and float16 is still written the same way


def test_an_int8_value_is_half_the_size_and_decodes_to_float16_within_half_a_step():
    held = passages(ids=(), sizes=(40, 7), ratio=4)
    held = PassageStates.from_passages([(s * 30, c) for s, c in (held.passage(0), held.passage(1))], 4,
                                       fingerprint=FINGERPRINT)  # fmt: skip  # rows far from unit scale
    value = held.to_bytes("int8")
    groups, width = held.states.shape
    assert len(value) == HEADER_BYTES + 8 * 3 + 4 * groups + 4 * groups + groups * width
    decoded = PassageStates.from_bytes(value, FINGERPRINT, 4, states="int8")
    assert decoded.states.dtype == np.float16 and decoded.states.shape == held.states.shape
    np.testing.assert_array_equal(decoded.counts, held.counts)
    assert np.shares_memory(decoded.counts, np.frombuffer(value, np.uint8))  # counts and offsets are still views
    step = np.abs(held.states.astype(np.float32)).max(axis=1, keepdims=True) / 127
    error = np.abs(decoded.states.astype(np.float32) - held.states.astype(np.float32))
    assert (error <= step / 2 + np.abs(held.states.astype(np.float32)) * 2**-10).all()  # half a step + f16 rounding
    assert error.max() > 0  # it is quantized
    np.testing.assert_array_equal(decoded.states, held.as_stored("int8").states)  # as_stored is the round trip
    assert held.as_stored("float16") is held


def test_int8_is_symmetric_per_row_and_keeps_zero_rows():
    rows = np.array([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-1000.0, 3.0, 999.0]], dtype=np.float16)
    q, scales = quantize_int8(rows)
    nq, nscales = quantize_int8(-rows)
    np.testing.assert_array_equal(nq, -q)
    np.testing.assert_array_equal(nscales, scales)
    assert q.dtype == np.int8 and scales.dtype == np.float32 and list(np.abs(q).max(axis=1)) == [127, 0, 127]
    assert scales[1] == 0 and (q[1] == 0).all()
    with pytest.raises(ValueError, match="finite"):
        quantize_int8(np.array([[1.0, np.inf]]))


def test_a_value_is_refused_when_it_holds_another_format_than_asked():
    value = passages(ids=()).to_bytes("int8")
    with pytest.raises(CorruptStates, match="holds int8 states, not float16"):
        PassageStates.from_bytes(value, FINGERPRINT, 4, states="float16")
    with pytest.raises(CorruptStates, match="holds float16 states, not int8"):
        PassageStates.from_bytes(passages(ids=()).to_bytes(), FINGERPRINT, 4, states="int8")
    with pytest.raises(CorruptStates, match="dtype 3"):  # a code this version does not know
        PassageStates.from_bytes(value[:5] + bytes([3]) + value[6:], FINGERPRINT, 4)
    with pytest.raises(ValueError, match="float16, int8"):
        passages().to_bytes("int4")


def passage_bytes_table(tokens=256, width=640) -> list[str]:
    """The README's sizing table, from values the codec writes (pytest -s prints it)."""
    rows = []
    for ratio in (1, 2, 4, 8, 16, 32):
        groups = -(-tokens // ratio)
        held = PassageStates.from_passages([(np.ones((groups, width)), np.full(groups, ratio))], ratio,
                                           fingerprint=FINGERPRINT)  # fmt: skip
        half, full = len(held.to_bytes("float16")), len(held.to_bytes("int8"))
        assert (half, full) == (64 + groups * (4 + 2 * width), 64 + groups * (8 + width))  # the README's formulas
        rows.append(f"| {ratio} | {groups} | {half:,} B | {full:,} B | {full / half:.3f} | {half / 1e3:.0f} GB | "
                    f"{full / 1e3:.0f} GB |")  # fmt: skip
    return rows


def test_the_readme_sizing_table_is_what_the_codec_writes():
    rows = passage_bytes_table()
    print("\n".join(rows))
    readme = (Path(__file__).parents[3] / "docs" / "store.md").read_text().splitlines()
    start = readme.index("<!-- passage-bytes-table -->") + 3  # the marker, the header, the rule
    assert readme[start : start + len(rows)] == rows
