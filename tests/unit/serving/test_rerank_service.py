"""RerankService on the exported tiny KaLM-style model, in-process: the logic the `<name>` BLS model runs."""

import numpy as np
import pytest

from nestrank.protocol.errors import NotFoundError, ValidationError
from nestrank.protocol.reranking import RerankOptions, parse_rerank_options, passage_id
from nestrank.serving.passage_cache import PassageCache
from nestrank.serving.rerank_service import Candidates, RerankService
from nestrank.serving.reranker import FBNLReranker, sigmoid, stack
from tests.names import KALM

DOCS = ["how to read a file in python", "ok", "the weather is nice today", "open the file and read each line"]
QUERY = "read a file"


@pytest.fixture
def setup(reranker_exports):
    export = reranker_exports[KALM]
    reranker = FBNLReranker.from_repository(export.model_dirs[0].parent, KALM, export.config)
    encoded = []

    def encode(documents, ratio):
        encoded.extend(documents)
        return reranker.encoder.encode(documents, ratio)

    service = RerankService(export.config, reranker.tokenizer, PassageCache(1 << 20), encode, reranker.scorer.margins)
    return service, reranker, encoded


def options(service, **params):
    return parse_rerank_options(params, service.config)


def test_scores_match_the_in_process_pipeline_and_come_back_ranked(setup):
    service, reranker, _ = setup
    result = service.rerank(QUERY, Candidates(documents=DOCS), options(service))
    expected = sigmoid(reranker.margins(QUERY, DOCS, 4))
    np.testing.assert_allclose(result.scores, expected[result.indices], atol=1e-6)
    assert list(result.scores) == sorted(result.scores, reverse=True)
    assert result.passage_ids == [passage_id(DOCS[i]) for i in result.indices]


def test_a_second_rerank_encodes_nothing(setup):
    service, _, encoded = setup
    service.rerank(QUERY, Candidates(documents=DOCS), options(service))
    assert len(encoded) == len(DOCS)
    service.rerank("another query", Candidates(documents=DOCS + DOCS[:1]), options(service, compression_ratio=8))
    assert len(encoded) == len(DOCS)  # ratio 8 re-pooled from the stored ratio 4
    assert service.cache.stats.misses == len(DOCS)


def test_warm_then_rerank_by_id(setup):
    service, _, encoded = setup
    ids = service.warm(DOCS, 4)
    by_id = service.rerank(QUERY, Candidates(passage_ids=ids), options(service))
    by_text = service.rerank(QUERY, Candidates(documents=DOCS), options(service))
    np.testing.assert_array_equal(by_id.indices, by_text.indices)
    assert len(encoded) == len(DOCS)
    with pytest.raises(NotFoundError, match=r"passage_ids\[0\]: unknown passage id"):
        service.rerank(QUERY, Candidates(passage_ids=["0" * 32]), options(service))


def test_client_states_rerank_like_documents_and_repool(setup):
    service, reranker, _ = setup
    states, counts = stack(reranker.encoder.encode(DOCS, 2))
    result = service.rerank(QUERY, Candidates(states=states, counts=counts),
                            options(service, compression_ratio=8, states_ratio=2))  # fmt: skip
    expected = sigmoid(reranker.margins(QUERY, DOCS, 8))
    np.testing.assert_allclose(result.scores, expected[result.indices], atol=1e-5)


def test_top_n(setup):
    service, _, _ = setup
    assert len(service.rerank(QUERY, Candidates(documents=DOCS), options(service, top_n=2)).indices) == 2


@pytest.mark.parametrize(
    "candidates, fragment",
    [
        (Candidates(), "send exactly one of documents, passage_ids, passage_states"),
        (Candidates(documents=["a"], passage_ids=["b"]), "send exactly one of"),
        (Candidates(documents=[]), "no candidates"),
        (Candidates(documents=["fine", ""]), r"documents\[1\]: empty string"),
        (
            Candidates(states=np.zeros((1, 2, 5), np.float16), counts=np.ones((1, 2), np.int32)),
            r"expected \[N, groups, 640\]",
        ),
        (
            Candidates(states=np.zeros((1, 2, 640), np.float16), counts=np.ones((1, 3), np.int32)),
            "passage_counts: shape",
        ),
        (
            Candidates(states=np.zeros((2, 2, 640), np.float16), counts=np.array([[1, 1], [0, 0]], np.int32)),
            r"passage_counts\[1\]: no valid group",
        ),
        (Candidates(states=np.full((1, 1, 640), np.nan, np.float16), counts=np.ones((1, 1), np.int32)), "NaN"),
    ],
)
def test_bad_candidates(setup, candidates, fragment):
    service, _, _ = setup
    with pytest.raises(ValidationError, match=fragment):
        service.rerank(QUERY, candidates, options(service))


def test_bad_queries(setup):
    service, _, _ = setup
    with pytest.raises(ValidationError, match="query: empty"):
        service.rerank("  ", Candidates(documents=DOCS), options(service))
    long_query = " ".join(["file"] * 600)
    with pytest.raises(ValidationError, match=r"query: \d+ tokens exceed max_query_tokens 512"):
        service.rerank(long_query, Candidates(documents=DOCS), RerankOptions(4, "find", truncate=False))
    cut = service.rerank(long_query, Candidates(documents=DOCS), options(service))
    assert len(cut.scores) == len(DOCS)
