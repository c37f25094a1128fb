"""A flood of reranks of new documents (issue 22's check), on the session server's tiny T5 reranker: 160 at once of
48 new documents each, from a client that does not retry. Every request gets its right answer or an overloaded
refusal that comes within 2 s (the rerank model's max_requests_in_flight, `_encode` and `_score`'s schedulers);
nothing INTERNAL, no crash (metrics updated from several threads at once crashed tritonserver 2.51:
serving/triton/metrics.py); the server is ready afterwards."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from nestrank.clients.transport import typed_error
from nestrank.protocol.errors import OverloadedError
from nestrank.protocol.reranking import DOCUMENTS, INDICES, QUERY, SCORES
from nestrank.serving.pipeline.reranker import FBNLReranker
from tests.names import TINY_T5

pytestmark = pytest.mark.slow

REQUESTS, DOCUMENTS_EACH, REFUSAL_S = 160, 48, 2.0
QUERY_TEXT = "how do I read a file"


def documents_of(request: int) -> list[str]:
    return [f"flood {time.time_ns()} request {request} passage {k}: read the file line by line" for k in range(
        DOCUMENTS_EACH)]  # fmt: skip


def test_a_flood_of_reranks_gets_right_answers_or_quick_refusals(server, reranker_exports, repository):
    batches = [documents_of(i) for i in range(REQUESTS)]

    async def run():
        client = grpcclient_aio.InferenceServerClient(server.config.grpc_url)

        async def one(docs):
            query = grpcclient_aio.InferInput(QUERY, [1, 1], "BYTES")
            query.set_data_from_numpy(np.array([[QUERY_TEXT.encode()]], dtype=object))
            texts = grpcclient_aio.InferInput(DOCUMENTS, [1, len(docs)], "BYTES")
            texts.set_data_from_numpy(np.array([[d.encode() for d in docs]], dtype=object))
            outputs = [grpcclient_aio.InferRequestedOutput(n) for n in (SCORES, INDICES)]
            started = time.monotonic()
            try:
                result = await client.infer(TINY_T5, [query, texts], outputs=outputs, client_timeout=300)
                return (result.as_numpy(SCORES)[0], result.as_numpy(INDICES)[0]), time.monotonic() - started
            except InferenceServerException as err:
                return typed_error(err), time.monotonic() - started

        try:
            return await asyncio.gather(*(one(docs) for docs in batches))
        finally:
            await client.close()

    started = time.monotonic()
    results = asyncio.run(run())
    elapsed = time.monotonic() - started
    served = [(i, outcome) for i, (outcome, _) in enumerate(results) if isinstance(outcome, tuple)]
    refused = [seconds for outcome, seconds in results if isinstance(outcome, OverloadedError)]
    others = [outcome for outcome, _ in results if not isinstance(outcome, (tuple, OverloadedError))]
    assert not others, others[:3]  # nothing INTERNAL, nothing late: right answers or overload
    assert served, "nothing was served"
    assert max(refused, default=0.0) <= REFUSAL_S, sorted(refused)[-3:]
    export = reranker_exports[TINY_T5]
    reranker = FBNLReranker.from_repository(repository, TINY_T5, export.config)
    for i, (scores, indices) in served[:8]:  # right answers: the in-process pipeline's scores
        docs = batches[i]
        expected = 1 / (1 + np.exp(-reranker.margins(QUERY_TEXT, docs, export.config.default_ratio)))
        np.testing.assert_allclose(scores, expected[indices], atol=1e-4)
    assert server.is_ready()
    print(f"{REQUESTS} reranks of {DOCUMENTS_EACH} new documents at once, no retries: {len(served)} served, "
          f"{len(refused)} refused (p50 {np.median(refused or [0]) * 1e3:.0f} ms, max "
          f"{max(refused, default=0) * 1e3:.0f} ms), all done in {elapsed:.1f} s")  # fmt: skip


def test_index_warm_and_reranks_at_the_default_concurrency_are_never_refused(grpc_url):
    """The clients' default concurrency (4) is within what the rerank models admit: without retries, `index` and
    `warm` of more documents than four requests carry, and four reranks at once of new documents, all succeed."""
    from nestrank.clients.rerank import AsyncRerankClient
    from nestrank.clients.transport import NO_RETRIES

    stamp = time.time_ns()
    docs = [f"default concurrency {stamp} passage {k}: open the file and read it" for k in range(160)]

    async def run():
        async with AsyncRerankClient(grpc_url, TINY_T5, retry=NO_RETRIES) as client:
            assert client.concurrency == 4
            indexed = await client.index(docs[:96], [f"dc-{stamp}-{k}" for k in range(96)])
            warmed = await client.warm(docs[96:])
            ranked = await asyncio.gather(*(client.rerank(QUERY_TEXT, [f"{d} (query {q})" for d in docs[:40]])
                                            for q in range(4)))  # fmt: skip
            return indexed, warmed, ranked

    indexed, warmed, ranked = asyncio.run(run())
    assert len(indexed.content_ids) == 96 and (indexed.tokens > 0).all() and len(warmed) == 64
    assert all(len(r) == 40 for r in ranked)
