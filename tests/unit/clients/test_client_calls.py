"""What one call promises, over real gRPC to a local server that speaks Triton's protocol: one deadline shared by
everything the call sends, no 30 s cap on an attempt, siblings and their gRPC calls cancelled when the call gives
up (the server sees the cancellation), `concurrency` per client, any event loop, and close() failing what runs."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest

from nestrank.clients.embed import AsyncEmbedClient
from nestrank.clients.rerank import AsyncRerankClient
from nestrank.clients.transport import NO_RETRIES
from nestrank.protocol.errors import (
    BackendError,
    ClientClosedError,
    DeadlineExceededError,
    ModelNotFoundError,
    ValidationError,
)
from tests.unit.clients.local_triton import LocalTriton, answering, embeddings, fail, hold


@pytest.fixture
def server():
    running = LocalTriton()
    yield running
    running.stop()


def client(server, **options) -> AsyncEmbedClient:
    return AsyncEmbedClient(server.url, "m", **{"retry": NO_RETRIES, **options})


def texts(n: int) -> list[str]:
    return [f"text {i:03d}" for i in range(n)]  # one length: chunks of 4 in order


def test_an_attempt_gets_the_whole_deadline_not_30_s(server):
    async def one():
        async with client(server, timeout_s=600) as c:
            await c.embed(["x"])

    asyncio.run(one())
    (request,) = server.requests()
    assert request.time_remaining > 590  # was capped at RetryPolicy.attempt_timeout_s = 30


def test_every_request_of_a_call_shares_its_one_deadline(server):
    """Two requests of 1 s each, one after the other, within a 1.5 s call: the second has what the first left, so
    the call fails (was: each request had a fresh timeout_s of its own, and the call took 2 s)."""

    def slowly(server, received, request, context):
        time.sleep(1.0)
        return embeddings(server, received, request, context)

    server.answer = slowly

    async def one():
        async with client(server, timeout_s=1.5, concurrency=1) as c:
            with pytest.raises(DeadlineExceededError):
                await c.embed(texts(8))  # two requests of 4, one at a time

    asyncio.run(one())
    first, second = server.requests()
    assert second.time_remaining < first.time_remaining - 0.9  # the first took 1 s of the call's 1.5


def test_a_failed_call_cancels_its_siblings_and_their_grpc_calls(server):
    """One request of 19 is refused; the 18 others, held by the server, are cancelled before the error is
    raised, so nothing the call started goes on (was: 18 of 19 went on, retrying until their deadlines)."""

    def refuse_one(server, received, request, context):
        if received.texts[0] == "text 036":
            server.wait_for(lambda: len(server.requests()) == 19)  # every sibling is in flight
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text[0]: refused")
        return hold(server, received, request, context)

    server.answer = refuse_one

    async def one():
        async with client(server, concurrency=32) as c:
            with pytest.raises(ValidationError, match="refused"):
                await c.embed(texts(76), batch_size=4)
            assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(one())
    server.wait_for(lambda: len(server.requests("cancelled")) == 18, timeout_s=5)
    assert len(server.requests()) == 19


def test_a_failed_call_sends_nothing_more(server):
    """With one request in flight at a time, the call stops at the first failure (was: it sent all 19)."""
    server.answer = fail(grpc.StatusCode.INVALID_ARGUMENT, "text[0]: refused")

    async def one():
        async with client(server, concurrency=1) as c:
            with pytest.raises(ValidationError):
                await c.embed(texts(76), batch_size=4)
            await asyncio.sleep(0.5)  # the loop goes on, as an app's does: nothing more may be sent meanwhile

    asyncio.run(one())
    assert len(server.requests()) == 1


def test_a_spent_deadline_cancels_everything_the_call_started(server):
    server.answer = hold

    async def one():
        async with client(server, timeout_s=1.0, concurrency=8) as c:
            with pytest.raises(DeadlineExceededError):
                await c.embed(texts(64))  # 16 requests, 8 at a time
            await asyncio.sleep(0.5)  # the loop goes on: the 8 requests not yet sent must stay unsent

    asyncio.run(one())
    assert len(server.requests()) == 8
    server.wait_for(lambda: len(server.requests("cancelled")) == 8, timeout_s=5)


def test_a_caller_that_cancels_cancels_the_requests(server):
    server.answer = hold

    async def one():
        async with client(server, concurrency=4) as c:
            call = asyncio.ensure_future(c.embed(texts(16)))
            await asyncio.to_thread(server.wait_for, lambda: len(server.requests()) == 4)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(one())
    server.wait_for(lambda: len(server.requests("cancelled")) == 4, timeout_s=5)


def test_concurrency_is_per_client_not_per_call(server):
    def slowly(server, received, request, context):
        time.sleep(0.05)
        return embeddings(server, received, request, context)

    server.answer = slowly

    async def two_calls():
        async with client(server, concurrency=2) as c:
            await asyncio.gather(c.embed(texts(16)), c.embed(texts(16)), c.embed(texts(16)))

    asyncio.run(two_calls())
    assert len(server.requests()) == 12 and server.max_in_flight == 2  # was 6: 2 per call


def test_an_async_client_works_from_any_event_loop(server):
    c = client(server)
    assert asyncio.run(c.embed(["a"])).shape == (1, 8)
    assert asyncio.run(c.embed(["b"])).shape == (1, 8)  # a second asyncio.run: was "Event loop is closed"
    results = []
    threads = [threading.Thread(target=lambda: results.append(asyncio.run(c.embed(["c"])))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 3
    asyncio.run(c.close())


def test_close_fails_the_calls_still_running_and_the_ones_after(server):
    server.answer = hold

    async def one():
        c = client(server)
        call = asyncio.ensure_future(c.embed(texts(8)))
        await asyncio.to_thread(server.wait_for, lambda: len(server.requests()) == 2)
        await c.close()
        with pytest.raises(ClientClosedError):
            await call
        await c.close()  # idempotent
        with pytest.raises(ClientClosedError):
            await c.embed(["after"])
        with pytest.raises(ClientClosedError):
            await c.info()

    asyncio.run(one())
    server.wait_for(lambda: len(server.requests("cancelled")) == 2, timeout_s=5)


def test_an_unknown_model_is_final_on_a_ready_server(server):
    async def one():
        async with AsyncEmbedClient(server.url, "no-such-model") as c:  # default retries
            await c.embed(["x"])

    with pytest.raises(ModelNotFoundError, match="unknown model: 'no-such-model'"):
        asyncio.run(one())
    assert server.readiness_probes == 1


def test_rerank_checks_its_arguments_and_its_outputs(server):
    async def rerank(*args, **kwargs):
        async with AsyncRerankClient(server.url, "r", retry=NO_RETRIES) as c:
            return await c.rerank(*args, **kwargs)

    for args, kwargs, message in (
        ((None, ["doc"]), {}, "query: expected a string, got NoneType"),
        (("  ", ["doc"]), {}, "query: empty"),
        (("q\udcff", ["doc"]), {}, "query: not valid Unicode"),
        (("q", ["doc", None]), {}, r"documents\[1\]: expected a string"),
        (("q",), {"passages": ["id", "\ud800"]}, r"passage_ids\[1\]: not valid Unicode"),
        (("q", ["doc"]), {"passages": ["id"]}, "exactly one of"),
        (("q", ["doc"]), {"top_n": 0}, "top_n: must be in 1"),
        (("q", ["doc"]), {"return_documents": "yes"}, "return_documents"),
    ):
        with pytest.raises(ValidationError, match=message):
            asyncio.run(rerank(*args, **kwargs))
    assert server.requests() == []
    server.answer = answering("scores", np.array([[0.5]], np.float32), "FP32")
    with pytest.raises(BackendError, match="no 'indices' output"):  # was a TypeError
        asyncio.run(rerank("q", ["doc"]))
