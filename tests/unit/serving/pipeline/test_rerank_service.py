"""RerankService on the exported KaLM-shaped model, in-process: the logic the `<name>` BLS model runs, checked
against an independent transcription of the official code (tests/official_kalm.py), not against itself."""

import numpy as np
import pytest
import torch

from nestrank.export.reranker import INT8_STATES_MAX_SCORE_DIFF, parity_documents
from nestrank.protocol.errors import NotFoundError, ValidationError
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import (
    INDEX,
    RerankOptions,
    from_wire,
    parse_rerank_options,
    passage_id,
    wire_tensors,
)
from nestrank.serving.pipeline.passage_cache import PassageCache
from nestrank.serving.pipeline.passage_store import MemoryStore, open_store
from nestrank.serving.pipeline.passage_tiers import Passages
from nestrank.serving.pipeline.rerank_service import Candidates, RerankService
from nestrank.serving.pipeline.reranker import FBNLReranker
from tests.names import KALM

pytestmark = pytest.mark.slow  # exports two rerankers (the session's shared fixture)

DOCS = ["how to read a file in python", "ok", "the weather is nice today", "open the file and read each line"]
QUERY = "read a file"


@pytest.fixture(scope="module")
def reranker(reranker_exports):
    export = reranker_exports[KALM]
    return FBNLReranker.from_repository(export.model_dirs[0].parent, KALM, export.config)


class Counted:
    """The service's SubModels in process, keeping what it encodes and the sizes of what it scores."""

    def __init__(self, reranker):
        self.reranker, self.encoded, self.encode_calls, self.score_calls = reranker, [], [], []

    def encode(self, documents, ratio):
        self.encoded.extend(documents)
        self.encode_calls.append(len(documents))
        return self.reranker.encode(documents, ratio)

    def score(self, prompt, chunks):
        self.score_calls.append([chunk.states.nbytes + chunk.counts.nbytes for chunk in chunks])  # as they travel
        return self.reranker.score(prompt, chunks)


class Bound:
    """A RerankService with its SubModels, called as the rerank model calls it."""

    def __init__(self, service, calls):
        self.service, self.calls, self.config, self.passages = service, calls, service.config, service.passages

    def rerank(self, query, candidates, options):
        return self.service.rerank(query, candidates, options, self.calls)

    def store(self, kind, documents, ratio, ids, **params):
        options = parse_rerank_options({"kind": kind, "compression_ratio": ratio, **params}, self.config)
        return self.service.store(kind, documents, ids, options, self.calls)


def service_on(reranker, store, config=None):
    config = config or reranker.config
    passages = Passages(config.passage_fingerprint, config.ratios, PassageCache(1 << 20), store)
    calls = Counted(reranker)
    return Bound(RerankService(config, reranker.tokenizer, passages), calls), calls.encoded


@pytest.fixture
def setup(reranker):
    return service_on(reranker, MemoryStore())


def options(service, **params):
    return parse_rerank_options(params, service.config)


def official(official_kalm, documents, ratio=4, query=QUERY):
    return official_kalm.scores(query, documents, ratio, stored_as=torch.float16)


def test_scores_are_the_official_ones_ranked(setup, official_kalm):
    service, _ = setup
    result = service.rerank(QUERY, Candidates(documents=DOCS), options(service))
    np.testing.assert_allclose(result.scores, official(official_kalm, DOCS)[result.indices], atol=1e-5)
    assert list(result.scores) == sorted(result.scores, reverse=True)
    assert result.passage_ids == [passage_id(DOCS[i]) for i in result.indices]


def test_a_second_rerank_encodes_nothing_and_a_coarser_ratio_is_re_pooled(setup, official_kalm):
    service, encoded = setup
    service.rerank(QUERY, Candidates(documents=DOCS), options(service))
    assert len(encoded) == len(DOCS)
    result = service.rerank(QUERY, Candidates(documents=DOCS + DOCS[:1]), options(service, compression_ratio=8))
    assert len(encoded) == len(DOCS)  # ratio 8 re-pooled from the stored ratio 4
    np.testing.assert_allclose(np.sort(result.scores), np.sort(official(official_kalm, DOCS + DOCS[:1], 8)),
                               atol=1e-4)  # fmt: skip


def test_index_under_user_ids_then_rerank_by_them(setup):
    service, encoded = setup
    stored = service.store(INDEX, DOCS, 4, [f"doc-{i}" for i in range(len(DOCS))])
    assert stored.content_ids == [passage_id(d) for d in DOCS] and (stored.tokens > 0).all()
    assert (stored.stored_bytes > 0).all()
    by_id = service.rerank(QUERY, Candidates(passage_ids=["doc-3", "doc-0"]), options(service))
    by_text = service.rerank(QUERY, Candidates(documents=[DOCS[3], DOCS[0]]), options(service))
    np.testing.assert_array_equal(by_id.indices, by_text.indices)
    np.testing.assert_array_equal(by_id.scores, by_text.scores)
    assert by_id.passage_ids == [["doc-3", "doc-0"][i] for i in by_id.indices]
    assert len(encoded) == len(DOCS)
    again = service.store(INDEX, DOCS, 4, [f"doc-{i}" for i in range(len(DOCS))])
    assert (again.stored_bytes == 0).all() and (again.tokens == 0).all() and len(encoded) == len(DOCS)  # skipped
    service.store(INDEX, [DOCS[2]], 4, ["doc-0"])  # doc-0 now names other text
    moved = service.rerank(QUERY, Candidates(passage_ids=["doc-0"]), options(service))
    np.testing.assert_array_equal(moved.scores, service.rerank(QUERY, Candidates(documents=[DOCS[2]]),
                                                               options(service)).scores)  # fmt: skip


def test_unknown_ids_are_not_found_naming_how_many_and_the_first(setup):
    service, _ = setup
    service.store(INDEX, DOCS[:1], 4, ["known"])
    with pytest.raises(NotFoundError, match=r"passage_ids: 7 of 8 ids are not stored .*first: 'x0', 'x1', 'x2'"):
        service.rerank(QUERY, Candidates(passage_ids=["known"] + [f"x{i}" for i in range(7)]), options(service))
    with pytest.raises(NotFoundError, match="1 of 1 ids are not stored for this model at ratio 2"):
        service.rerank(QUERY, Candidates(passage_ids=["known"]), options(service, compression_ratio=2))


def test_a_user_id_twice_with_different_documents_is_refused(setup):
    service, _ = setup
    with pytest.raises(ValidationError, match=r"passage_ids\[1\]: 'a' appears twice with different documents"):
        service.store(INDEX, DOCS[:2], 4, ["a", "a"])
    with pytest.raises(ValidationError, match="2 ids for 1 documents"):
        service.store(INDEX, DOCS[:1], 4, ["a", "b"])


def test_client_states_score_like_documents_and_repool(setup, reranker, official_kalm):
    service, _ = setup
    sent = reranker.encoder.encode(DOCS, 2)
    fingerprint = reranker.config.passage_fingerprint
    result = service.rerank(QUERY, Candidates(states=sent),
                            options(service, compression_ratio=8, states_ratio=2,
                                    passage_fingerprint=fingerprint))  # fmt: skip
    np.testing.assert_allclose(result.scores, official(official_kalm, DOCS, 8)[result.indices], atol=1e-4)


@pytest.mark.parametrize(
    "fingerprint, message",
    [(None, "carry no passage fingerprint"), ("c" * 32, "made by the model with passage fingerprint 'ccc")],
)
def test_states_of_another_model_are_refused(setup, reranker, fingerprint, message):
    service, _ = setup
    sent = reranker.encoder.encode(DOCS, 4)
    params = {"passage_fingerprint": fingerprint} if fingerprint else {}
    with pytest.raises(ValidationError, match=f"passage_fingerprint: .*{message}"):
        service.rerank(QUERY, Candidates(states=sent), options(service, **params))


def test_top_n(setup):
    service, _ = setup
    assert len(service.rerank(QUERY, Candidates(documents=DOCS), options(service, top_n=2)).indices) == 2


def test_candidates_rank_by_their_margins_and_score_by_the_one_sigmoid(setup):
    """Margins past ~17 all score 1.0 in float32: the order follows the margins, not input order."""
    service, _ = setup

    class Saturated:
        def encode(self, documents, ratio):
            return service.calls.encode(documents, ratio)

        def score(self, prompt, chunks):
            return np.array([18.0, 25.0, 17.5, -3.0], np.float32)

    result = service.service.rerank(QUERY, Candidates(documents=DOCS), options(service), Saturated())
    assert list(result.indices) == [1, 0, 2, 3]
    np.testing.assert_array_equal(result.margins, [25.0, 18.0, 17.5, -3.0])
    assert list(result.scores[:3]) == [1.0, 1.0, 1.0] and result.scores.dtype == np.float32


def test_bulk_work_is_encoded_a_chunk_at_a_time_and_stored_as_it_goes(reranker):
    import dataclasses

    config = dataclasses.replace(reranker.config, bulk_encode_documents=3)
    service, _ = service_on(reranker, MemoryStore(), config)
    documents = [f"{d} (copy {i})" for i in range(2) for d in DOCS]  # 8 distinct documents
    service.store(INDEX, documents, 4, [f"d{i}" for i in range(8)])  # bulk: the default of index
    assert service.calls.encode_calls == [3, 3, 2]
    service.rerank(QUERY, Candidates(documents=[d + "!" for d in documents]), options(service))  # interactive
    assert service.calls.encode_calls[3:] == [8]


def sent(states, counts) -> PassageStates:
    """Client-sent passages as the rerank model reads them off the wire (no fingerprint yet)."""
    wire = wire_tensors(PassageStates.from_padded(np.asarray(states, np.float16), np.asarray(counts, np.int32), 4))
    return from_wire(*wire.values(), ratio=4)


@pytest.mark.parametrize(
    "candidates, fragment",
    [
        (Candidates(), "send exactly one of documents, passage_ids, passage_states"),
        (Candidates(documents=["a"], passage_ids=["b"]), "send exactly one of"),
        (Candidates(documents=[]), "no candidates"),
        (Candidates(documents=["fine", ""]), r"documents\[1\]: empty string"),
        (Candidates(states=sent(np.zeros((1, 2, 5)), np.ones((1, 2)))), r"width 5; expected \[groups, 640\]"),
        (Candidates(states=sent(np.zeros((2, 2, 640)), [[1, 1], [0, 0]])), r"passage_counts\[1\]: no valid group"),
        (Candidates(states=sent(np.full((1, 1, 640), np.nan), np.ones((1, 1)))), "NaN"),
        (Candidates(states=sent(np.zeros((1, 300, 640)), np.ones((1, 300)))), "300 groups exceed 256"),
        (Candidates(states=sent(np.zeros((1, 2, 640)), [[1, 5]])), "each group holds 0..4 tokens"),
    ],
)
def test_bad_candidates(setup, candidates, fragment):
    service, _ = setup
    fingerprint = service.config.passage_fingerprint
    with pytest.raises(ValidationError, match=fragment):
        service.rerank(QUERY, candidates, options(service, passage_fingerprint=fingerprint))


def test_bad_queries(setup):
    service, _ = setup
    with pytest.raises(ValidationError, match="query: empty"):
        service.rerank("  ", Candidates(documents=DOCS), options(service))
    long_query = " ".join(["file"] * 600)
    with pytest.raises(ValidationError, match=r"query: \d+ tokens exceed max_query_tokens 512"):
        service.rerank(long_query, Candidates(documents=DOCS), RerankOptions(4, "find", truncate=False))
    cut = service.rerank(long_query, Candidates(documents=DOCS), options(service))
    assert len(cut.scores) == len(DOCS)


def test_requests_are_bounded_in_bytes_and_the_scorer_gets_bounded_calls(reranker, official_kalm):
    """At ratio 1, 1,000 candidates of up to 1,024 tokens could hold 1.3 GB of states on the Nano width: the request
    is refused before any work, naming the limit; what is admitted reaches the scorer in bounded calls."""
    import dataclasses

    config = dataclasses.replace(reranker.config, score_chunk_bytes=200_000)
    service, _ = service_on(reranker, MemoryStore(), config)
    most = config.candidates_per_request(1)
    assert most == (512 << 20) // (1024 * (2 * 640 + 4)) == 408 and config.candidates_per_request(4) == 1000
    with pytest.raises(ValidationError, match=r"documents: 409 candidates at ratio 1 may hold up to 513 MiB .* "
                                              r"max_request_state_bytes 512 MiB: send at most 408"):  # fmt: skip
        service.rerank(QUERY, Candidates(documents=["x"] * 409), options(service, compression_ratio=1))
    huge = PassageStates(np.zeros((500 * 1024, 640), np.float16), np.ones(500 * 1024, np.int32),
                         np.arange(501, dtype=np.int64) * 1024, 1)  # fmt: skip
    fingerprint = config.passage_fingerprint
    with pytest.raises(ValidationError, match="passage_states: .* exceed max_request_state_bytes"):
        service.rerank(QUERY, Candidates(states=huge),
                       options(service, compression_ratio=1, passage_fingerprint=fingerprint))  # fmt: skip
    docs = DOCS * 5
    result = service.rerank(QUERY, Candidates(documents=docs), options(service, compression_ratio=1))
    (chunks,) = service.calls.score_calls  # one call, its chunks admitted together
    assert len(chunks) > 1 and max(chunks) <= 200_000
    np.testing.assert_allclose(np.sort(result.scores), np.sort(official(official_kalm, docs, 1)), atol=1e-4)


@pytest.mark.parametrize("ratio", [1, 4, 32])
def test_int8_states_score_within_the_gate_and_the_same_before_and_after_they_are_stored(reranker, tmp_path, ratio):
    """On a real LMDB holding int8 states: the first rerank (encoded now) and the second (read back) agree exactly,
    by ids too, and stay within the export's int8 gate of the float16 scores."""
    documents = parity_documents(reranker.config.max_passage_tokens)
    halves, _ = service_on(reranker, MemoryStore())
    fulls, encoded = service_on(reranker, open_store(f"lmdb://{tmp_path}/store?map_size=256MiB&states=int8"))
    reference = halves.rerank(QUERY, Candidates(documents=documents), options(halves, compression_ratio=ratio))
    first = fulls.rerank(QUERY, Candidates(documents=documents), options(fulls, compression_ratio=ratio))
    fulls.passages.first_level = PassageCache(0)  # the second from the store itself
    second = fulls.rerank(QUERY, Candidates(documents=documents), options(fulls, compression_ratio=ratio))
    assert len(encoded) == len(documents) and fulls.passages.stats.hits == len(set(documents))
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.indices, second.indices)
    fulls.store(INDEX, documents[:3], ratio, ["a", "b", "c"])
    by_id = fulls.rerank(QUERY, Candidates(passage_ids=["a", "b", "c"]), options(fulls, compression_ratio=ratio))
    by_text = fulls.rerank(QUERY, Candidates(documents=documents[:3]), options(fulls, compression_ratio=ratio))
    np.testing.assert_array_equal(by_id.scores, by_text.scores)
    per_document = [r.scores[np.argsort(r.indices)] for r in (first, reference)]  # scores in document order
    assert 0 < np.abs(per_document[0] - per_document[1]).max() <= INT8_STATES_MAX_SCORE_DIFF
