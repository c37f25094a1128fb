"""The retrieval set kept in the repo and the nDCG@10 of `nestrank bench quality`."""

import json

import numpy as np

from nestrank.bench.quality import DATA, load_pairs, markdown, ndcg_at_10, renormalized


def test_the_docstring_set_is_in_the_repo_and_well_formed():
    header = json.loads(DATA.read_text(encoding="utf-8").splitlines()[0])
    pairs = load_pairs()
    assert len(pairs) == header["pairs"] >= 400
    assert len({q for q, _ in pairs}) == len(pairs) and len({d for _, d in pairs}) == len(pairs)  # one relevant each
    assert all(q and len(d) >= 120 for q, d in pairs)
    assert load_pairs(limit=10) == pairs[:10]


def test_ndcg_at_10():
    eye = np.eye(12, dtype=np.float32)
    assert ndcg_at_10(eye, eye) == 1.0
    # Query 0 ranks its document second (behind document 1): 1/log2(3); every other query first.
    queries = eye.copy()
    queries[0] = renormalized(np.array([[0.6, 0.8] + [0] * 10], np.float32), 12)[0]
    assert np.isclose(ndcg_at_10(queries, eye), (11 + 1 / np.log2(3)) / 12)
    # Every query's own document ranked last of 12 (past 10): 0.
    assert ndcg_at_10(1.0 - eye, eye) == 0.0


def test_markdown_table():
    report = {"layers": [3, 6], "dims": [384, 32], "ndcg": {3: {384: 0.5, 32: 0.25}, 6: {384: 0.75, 32: 0.5}}}
    assert markdown(report).splitlines()[2] == "| 3 of 6 | 0.500 | 0.250 |"
