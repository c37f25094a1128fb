"""The bad-input matrix, over raw tritonclient (no nestrank client validation), for every served model, internal
ones included: each bad request is refused with INVALID_ARGUMENT (NOT_FOUND for ids that are not stored) naming
its field (and the limit), its message is short, and the good requests sent together with it are answered, and
answered right. Where the model batches (the embedder, the passage encoder), Triton's statistics prove that the
bad request and the good ones ran in one model execution; the cases Triton itself refuses before any model code
runs (shapes, dtypes, batch sizes the config rules out) are marked, and the statistics prove that too."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from tests.names import KALM, MINILM

pytestmark = pytest.mark.slow

ENCODE, SCORE = f"{KALM}_encode", f"{KALM}_score"
HUGE = "9" * 5000
TEXT_5MB = "lorem ipsum " * 440_000


@dataclass(frozen=True)
class Tensor:
    name: str
    value: np.ndarray
    datatype: str

    def make(self, module):
        t = module.InferInput(self.name, list(self.value.shape), self.datatype)
        t.set_data_from_numpy(self.value)
        return t


def texts(name: str, values, shape=None) -> Tensor:
    array = np.array([v if isinstance(v, bytes) else v.encode() for v in values], dtype=object)
    return Tensor(name, array.reshape(shape or (len(values), 1)), "BYTES")


def row(name: str, values) -> Tensor:  # the rerank and score models take one request at a time: [1, ...]
    return texts(name, values, (1, len(values)))


def floats(name: str, array, datatype="FP16") -> Tensor:
    return Tensor(name, np.asarray(array, dtype=np.float16 if datatype == "FP16" else np.float32), datatype)


def ints(name: str, array, datatype="INT32") -> Tensor:
    return Tensor(name, np.asarray(array, dtype=np.int32 if datatype == "INT32" else np.int64), datatype)


@dataclass(frozen=True)
class Case:
    model: str
    inputs: list[Tensor]
    fragment: str
    params: dict = field(default_factory=dict)
    status: str = "INVALID_ARGUMENT"
    by_triton: bool = False  # refused by Triton's own checks against the config, before nestrank's code runs
    # False where the bad request cannot share Triton's execution: 5 MB arrive after the good ones have been handed
    # over (the embed model's execute only queues them). The embed scheduler's shared run, where the text is
    # tokenized and refused, is tested with a bad job among good ones in tests/unit/serving/pipeline/test_embedder.py.
    shares_execution: bool = True


def states(n, groups, width=640, value=0.0, counts=1, dtype="FP16"):  # ragged: n passages of `groups` groups
    return [floats("passage_states", np.full((1, n * groups, width), value), dtype),
            ints("passage_counts", np.full((1, n * groups), counts)), ints("passage_groups", np.full((1, n), groups))]  # fmt: skip


def score_inputs(ids=(2, 105, 50), n=1, groups=2, width=640, value=0.0, counts=1):
    return [ints("decoder_input_ids", [list(ids)], "INT64"), *states(n, groups, width, value, counts)]  # fmt: skip


Q = row("query", ["how do I read a file"])
CASES = {
    # all-MiniLM-L6-v2 (dynamic batching: the good request shares the bad one's batch)
    "embed: empty request": Case(MINILM, [texts("text", [])], "text", by_triton=True),
    "embed: empty string": Case(MINILM, [texts("text", ["fine", ""])], "text[1]: empty string"),
    "embed: invalid utf-8": Case(MINILM, [texts("text", [b"fine", b"\xc3\x28"])], "text[1]: not valid UTF-8"),
    "embed: dimensions not served": Case(MINILM, [texts("text", ["x"])], "dimensions: 100 is not served", {"dimensions": 100}),
    "embed: dimensions --128": Case(MINILM, [texts("text", ["x"])], "dimensions: must be an integer", {"dimensions": "--128"}),
    "embed: dimensions ²": Case(MINILM, [texts("text", ["x"])], "dimensions: must be an integer", {"dimensions": "²"}),
    "embed: dimensions of 5000 digits": Case(MINILM, [texts("text", ["x"])], "dimensions: must be an integer", {"dimensions": HUGE}),
    "embed: unknown precision": Case(MINILM, [texts("text", ["x"])], "precision: must be one of", {"precision": "int4"}),
    "embed: precision of 100 KB": Case(MINILM, [texts("text", ["x"])], "precision: 100000 characters exceed", {"precision": "p" * 100_000}),
    "embed: over max length": Case(MINILM, [texts("text", ["ok", "word " * 400])], "text[1]: 402 tokens exceed max_length 256", {"truncate": False}),
    "embed: 5 MB text, truncate=false": Case(MINILM, [texts("text", [TEXT_5MB])], "text[0]: 5280000 characters exceed", {"truncate": False}, shares_execution=False),
    "embed: too many texts": Case(MINILM, [texts("text", ["x"] * 257)], "batch-size must be <= 256", by_triton=True),
    "embed: unknown parameter": Case(MINILM, [texts("text", ["x"])], "temperature: unknown parameter", {"temperature": 1}),
    "embed: unknown parameter of 100 KB": Case(MINILM, [texts("text", ["x"])], "unknown parameter", {"k" * 100_000: 1}),
    "embed: normalize maybe": Case(MINILM, [texts("text", ["x"])], "normalize: must be true or false", {"normalize": "maybe"}),
    "embed: int8 unnormalised": Case(MINILM, [texts("text", ["x"])], "precision: int8 is calibrated", {"precision": "int8", "normalize": False}),
    "embed: truncation direction": Case(MINILM, [texts("text", ["x"])], "truncation_direction: must be one of", {"truncation_direction": "middle"}),
    "embed: input type": Case(MINILM, [texts("text", ["x"])], "input_type: must be one of", {"input_type": "image"}),
    "embed: wrong datatype": Case(MINILM, [ints("text", [[1]])], "text", by_triton=True),
    "embed: unknown input": Case(MINILM, [texts("words", ["x"])], "words", by_triton=True),
    # the rerank entry point (BLS)
    "rerank: empty query": Case(KALM, [row("query", [" "]), row("documents", ["a"])], "query: empty"),
    "rerank: no query": Case(KALM, [row("documents", ["a"])], "query: send exactly one query"),
    "rerank: two queries": Case(KALM, [row("query", ["a", "b"]), row("documents", ["a"])], "unexpected shape for input 'query'", by_triton=True),  # Triton: the config says one
    "rerank: no candidates": Case(KALM, [Q], "send exactly one of documents, passage_ids"),
    "rerank: documents and ids": Case(KALM, [Q, row("documents", ["a"]), row("passage_ids", ["f" * 32])], "send exactly one of"),
    "rerank: empty document": Case(KALM, [Q, row("documents", ["fine", ""])], "documents[1]: empty string"),
    "rerank: invalid utf-8": Case(KALM, [Q, row("documents", [b"\xff"])], "documents[0]: not valid UTF-8"),
    "rerank: ratio not exported": Case(KALM, [Q, row("documents", ["a"])], "compression_ratio: 3 was not exported", {"compression_ratio": 3}),
    "rerank: ratio ²": Case(KALM, [Q, row("documents", ["a"])], "compression_ratio: must be an integer", {"compression_ratio": "²"}),
    "rerank: query over the limit": Case(KALM, [row("query", [" ".join(["file"] * 600)]), row("documents", ["a"])], "exceed max_query_tokens 512", {"truncate": False}),
    "rerank: 1,001 documents": Case(KALM, [Q, row("documents", ["d"] * 1001)], "documents: 1001 exceed max_candidates 1000"),
    "rerank: warm 1,001 documents": Case(KALM, [row("documents", ["d"] * 1001)], "documents: 1001 exceed max_candidates 1000", {"warm": True}),
    "rerank: unknown traffic class": Case(KALM, [Q, row("documents", ["a"])], "traffic_class: 'urgent' is not a traffic class", {"traffic_class": "urgent"}),
    "rerank: top_n 0": Case(KALM, [Q, row("documents", ["a"])], "top_n: must be in 1..", {"top_n": 0}),
    "rerank: empty instruction": Case(KALM, [Q, row("documents", ["a"])], "instruction: empty", {"instruction": " "}),
    "rerank: instruction of 100 KB": Case(KALM, [Q, row("documents", ["a"])], "instruction: 100000 characters exceed", {"instruction": "i" * 100_000}),
    "rerank: unknown passage id": Case(KALM, [Q, row("passage_ids", ["f" * 32])], "passage_ids: 1 of 1 ids are not stored", status="NOT_FOUND"),
    "rerank: passage id of 100 KB": Case(KALM, [Q, row("passage_ids", ["f" * 100_000])], "passage_ids: 1 of 1 ids are not stored", status="NOT_FOUND"),
    "rerank: states without a fingerprint": Case(KALM, [Q, *states(1, 2)], "passage_fingerprint: the passage states carry no passage fingerprint"),
    "rerank: states of another model": Case(KALM, [Q, *states(1, 2)], "passage_fingerprint: the states were made by the model", {"passage_fingerprint": "0" * 32}),
    "rerank: states of the wrong width": Case(KALM, [Q, *states(1, 2, width=32)], "passage_states", by_triton=True),
    "rerank: states of the wrong dtype": Case(KALM, [Q, *states(1, 2, dtype="FP32")], "passage_states", by_triton=True),
    "rerank: 50,000 groups": Case(KALM, [Q, *states(1, 50_000, width=640)], "passage_states: 50000 groups exceed 256"),
    "rerank: counts near 2**31": Case(KALM, [Q, *states(1, 2, counts=2**31 - 1)], "passage_counts: each group holds 0..4 tokens"),
    "rerank: negative counts": Case(KALM, [Q, *states(1, 2, counts=-1)], "passage_counts: each group holds"),
    "rerank: NaN states": Case(KALM, [Q, *states(1, 2, value=np.nan)], "passage_states: holds NaN"),
    "rerank: a batch of 2": Case(KALM, [texts("query", ["a", "b"], (2, 1)), texts("documents", ["a", "b"], (2, 1))], "batch-size must be <= 1", by_triton=True),
    # the passage encoder (internal, reachable)
    "encode: empty document": Case(ENCODE, [texts("documents", [""])], "documents[0]: empty string"),
    "encode: no documents": Case(ENCODE, [row("documents", [])], "documents: no documents in the request"),  # shared a run once: every batch-mate failed
    "encode: bad admission group": Case(ENCODE, [texts("documents", ["a"])], "admission_group: a string of 1..64", {"admission_group": "g" * 65}),
    "encode: invalid utf-8": Case(ENCODE, [texts("documents", [b"\xc3\x28"])], "documents[0]: not valid UTF-8"),
    "encode: ratio not exported": Case(ENCODE, [texts("documents", ["a"])], "compression_ratio: 3 was not exported", {"compression_ratio": 3}),
    "encode: ratio --4": Case(ENCODE, [texts("documents", ["a"])], "compression_ratio: must be an integer", {"compression_ratio": "--4"}),
    "encode: a parameter it does not take": Case(ENCODE, [texts("documents", ["a"])], "states_dtype: unknown parameter", {"states_dtype": "int8"}),
    "encode: unknown parameter": Case(ENCODE, [texts("documents", ["a"])], "query: unknown parameter", {"query": "q"}),
    "encode: too many documents": Case(ENCODE, [row("documents", ["a"] * 33)], "documents: 33 texts exceed the limit of 32"),
    "encode: too many chunks": Case(ENCODE, [texts("documents", ["a"] * 65)], "batch-size must be <= 64", by_triton=True),
    # the scorer (internal, reachable)
    "score: token id past the vocabulary": Case(SCORE, score_inputs(ids=(2, 262144)), "decoder_input_ids: token ids must be in 0..262143"),
    "score: negative token id": Case(SCORE, score_inputs(ids=(2, -1)), "decoder_input_ids: token ids must be in"),
    "score: empty prompt": Case(SCORE, score_inputs(ids=()), "decoder_input_ids: shape"),
    "score: states of the wrong width": Case(SCORE, score_inputs(width=64), "unexpected shape for input 'passage_states'", by_triton=True),
    "score: counts of the wrong shape": Case(SCORE, [*score_inputs()[:2], ints("passage_counts", np.ones((1, 3))), ints("passage_groups", [[2]])], "passage_counts: shape [3]; expected [2]"),
    "score: groups that do not add up": Case(SCORE, [*score_inputs()[:3], ints("passage_groups", [[3]])], "passage_groups: shape [1]; expected [N] groups per passage"),
    "score: no groups": Case(SCORE, score_inputs()[:3], "passage_groups", by_triton=True),  # a required input
    "score: no valid group": Case(SCORE, score_inputs(counts=0), "passage_counts[0]: no valid group"),
    "score: NaN states": Case(SCORE, score_inputs(value=np.nan), "passage_states: at most 1024 groups, all values finite"),
    "score: 2,000 groups": Case(SCORE, score_inputs(groups=2000), "passage_states: at most 1024 groups"),
    "score: a batch of 2": Case(SCORE, [ints("decoder_input_ids", [[2], [2]], "INT64"), floats("passage_states", np.zeros((2, 1, 640)), "FP16"),
                                        ints("passage_counts", np.ones((2, 1))), ints("passage_groups", np.ones((2, 1)))], "batch-size must be <= 1", by_triton=True),
}  # fmt: skip

GOOD = {
    MINILM: [texts("text", ["alpha beta gamma"])],
    KALM: [Q, row("documents", ["open the file and read each line", "the weather"])],
    ENCODE: [row("documents", ["a passage to encode", "and another one"])],
    SCORE: score_inputs(ids=(2, 105, 1000, 2000), n=2, groups=3, value=0.1),
}
OUTPUT = {MINILM: "embeddings", KALM: "scores", ENCODE: "passage_states", SCORE: "margins"}


@pytest.fixture(scope="module")
def expected(grpc_url) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        return {
            m: client.infer(m, [t.make(grpcclient) for t in inputs]).as_numpy(OUTPUT[m]) for m, inputs in GOOD.items()
        }
    finally:
        client.close()


def test_the_matrix_covers_every_model_with_at_least_40_cases():
    assert len(CASES) >= 40 and {c.model for c in CASES.values()} == set(GOOD)


BATCHED = {MINILM, ENCODE}  # models whose dynamic batcher merges requests into one execution


@pytest.fixture(scope="module")
def statistics(grpc_url, server):
    """(executions, requests that reached the model) of a model so far: Triton's statistics, an admin API."""
    from nestrank.protocol.headers import ADMIN_KEY_HEADER, grpc_header

    client = grpcclient.InferenceServerClient(grpc_url)
    headers = {grpc_header(ADMIN_KEY_HEADER): server.config.admin_key}

    def read(model: str) -> tuple[int, int]:
        stats = client.get_inference_statistics(model, as_json=True, headers=headers)["model_stats"][0]
        done = stats["inference_stats"]
        return int(stats.get("execution_count", 0)), sum(int(done[k].get("count", 0)) for k in ("success", "fail"))

    yield read
    client.close()


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_refused_alone(grpc_url, expected, statistics, case):
    bad = CASES[case]

    async def together():
        client = grpcclient_aio.InferenceServerClient(grpc_url)
        try:
            calls = [client.infer(bad.model, [t.make(grpcclient_aio) for t in bad.inputs], parameters=bad.params)]
            calls += [client.infer(bad.model, [t.make(grpcclient_aio) for t in GOOD[bad.model]]) for _ in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    expected_requests = 3 if bad.by_triton else 4
    for _ in range(5):  # until the four requests ran as one execution (the batcher's 2 ms window usually merges them)
        before = statistics(bad.model)
        refused, *good = asyncio.run(together())
        for _ in range(40):  # Triton counts a request once its execute() returns, which may be after its answer
            executions, requests = (a - b for a, b in zip(statistics(bad.model), before))
            if requests >= expected_requests:
                break
            time.sleep(0.05)
        if bad.by_triton or bad.model not in BATCHED or not bad.shares_execution or executions == 1:
            break
    assert requests == expected_requests, (executions, requests)  # by Triton: it never reached the model
    if bad.model in BATCHED and not bad.by_triton and bad.shares_execution:
        assert executions == 1, f"the bad request never shared an execution with the good ones: {executions}"
    assert isinstance(refused, InferenceServerException), f"{case} was accepted"
    assert refused.status() == f"StatusCode.{bad.status}", refused.message()
    assert bad.fragment in refused.message()
    assert len(refused.message()) < 1200  # nothing a caller sent comes back whole
    for result in good:
        assert not isinstance(result, Exception), result
        np.testing.assert_allclose(result.as_numpy(OUTPUT[bad.model]).astype(np.float32),
                                   expected[bad.model].astype(np.float32), atol=1e-4)  # fmt: skip


def test_a_5_mb_text_is_cut_before_it_is_tokenized(grpc_url, expected, repository):
    """truncate=true (the default): cut to what max_length tokens can hold, then tokenized. Served whole, it takes
    less than tokenizing the whole text would take alone."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(repository / MINILM / "1" / "tokenizer.json"))
    started = time.monotonic()
    tokenizer.encode(TEXT_5MB)
    tokenize_whole = time.monotonic() - started
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        started = time.monotonic()
        result = client.infer(MINILM, [texts("text", [TEXT_5MB]).make(grpcclient)]).as_numpy("embeddings")
        elapsed = time.monotonic() - started
        short = client.infer(MINILM, [texts("text", [TEXT_5MB[:3000]]).make(grpcclient)]).as_numpy("embeddings")
    finally:
        client.close()
    np.testing.assert_allclose(result, short, atol=1e-5)  # the first 256 tokens are all that count either way
    assert elapsed < 0.5 * tokenize_whole, (elapsed, tokenize_whole)
