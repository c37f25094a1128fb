"""Passage states on the wire: pack and unpack are inverses, and PassageStates survives .npz, subsets and concat."""

import numpy as np

from nestrank.protocol.passages import PassageStates, pack, unpack


def passages(seed=0, sizes=(3, 1, 5)):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n, 4)).astype(np.float16), rng.integers(1, 5, size=n).astype(np.int32)) for n in sizes]


def test_pack_pads_with_zero_counts_and_unpack_trims_them():
    parts = passages()
    states, counts = pack(parts, np.float16)
    assert states.shape == (3, 5, 4) and counts.shape == (3, 5) and counts.dtype == np.int32
    assert (counts[1, 1:] == 0).all()
    for (s, c), (s2, c2) in zip(parts, unpack(states, counts)):
        np.testing.assert_array_equal(s, s2)
        np.testing.assert_array_equal(c, c2)


def test_passage_states_round_trip(tmp_path):
    held = PassageStates.from_passages(passages(), ratio=4, ids=["a", "b", "c"])
    held.save(tmp_path / "p.npz")
    loaded = PassageStates.load(tmp_path / "p.npz")
    assert (loaded.ratio, loaded.ids, len(loaded)) == (4, ("a", "b", "c"), 3)
    for i in range(3):
        np.testing.assert_array_equal(loaded.passage(i)[0], held.passage(i)[0])
    states, counts = loaded.padded([2, 0])
    again = PassageStates.from_padded(states, counts, 4, ["c", "a"])
    np.testing.assert_array_equal(again.passage(0)[1], held.passage(2)[1])
    joined = PassageStates.concat([held.subset([1]), held.subset([0, 2])])
    assert joined.ids == ("b", "a", "c") and len(joined) == 3
    np.testing.assert_array_equal(joined.passage(2)[0], held.passage(2)[0])
