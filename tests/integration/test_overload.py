"""Overload: the embed model's scheduler refuses at once, as a typed overload, a request that would wait past its
bound (from the work queued ahead), instead of timing it out later; Triton's count bound stays as a safety net;
and the client backs off from refusals and gets everything done."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from nestrank.clients.embed import EmbedClient
from nestrank.clients.transport import RetryPolicy, typed_error
from nestrank.export.triton_config import read_config, write_config
from nestrank.protocol.errors import OverloadedError
from nestrank.serving.launcher.server import ServerConfig, TritonServer
from tests.names import TINY_DECODER

pytestmark = pytest.mark.slow
TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 10)
BY_COUNT, BY_WAIT = "bounded-by-count", "bounded-by-wait"
WAIT_S = 0.3


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    """The tiny decoder twice: with the default bounds, and with a 0.3 s bound on the scheduler's queue."""
    repo = tmp_path_factory.mktemp("overload") / "repo"
    for name in (BY_COUNT, BY_WAIT):
        shutil.copytree(repository / TINY_DECODER, repo / name)
        config = read_config(repo / name)
        config.name = name
        if name == BY_WAIT:
            config.parameters["max_queue_wait_s"].string_value = json.dumps(WAIT_S)
        write_config(config, repo / name)
    config = ServerConfig.on_free_ports(repo)
    with TritonServer(config) as running:
        yield running


def test_the_queue_is_bounded_from_the_batch_limit(server):
    queue = read_config(server.config.model_repository / BY_COUNT).dynamic_batching.default_queue_policy
    # max batch 16; Triton's time bound is the model's own max_queue_wait_s (60 s for an embedder)
    assert (queue.max_queue_size, queue.default_timeout_microseconds) == (64, 60_000_000)


def flood(url: str, model: str, requests: int, texts: int = 1):
    """`requests` at once, of `texts` texts each: (seconds to be refused, seconds to be served), nothing else."""

    async def run():
        client = grpcclient_aio.InferenceServerClient(url)
        tensor = grpcclient_aio.InferInput("text", [texts, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[f"{i} {TEXT}".encode()] for i in range(texts)], dtype=object))

        async def one():
            started = time.monotonic()
            try:
                await client.infer(model, [tensor])
                return "ok", time.monotonic() - started
            except InferenceServerException as err:
                return typed_error(err), time.monotonic() - started

        try:
            return await asyncio.gather(*(one() for _ in range(requests)))
        finally:
            await client.close()

    results = asyncio.run(run())
    shed = [seconds for outcome, seconds in results if isinstance(outcome, OverloadedError)]
    served = [seconds for outcome, seconds in results if outcome == "ok"]
    assert len(shed) + len(served) == len(results), [o for o, _ in results if o != "ok"][:3]  # nothing else failed
    assert shed and served
    return shed, served


def test_a_request_that_would_wait_past_the_bound_is_refused_at_once(server):
    """300 requests of 16 texts at once (minutes of work, which Triton's request-count bound admitted): the ones the
    bound cannot take are refused as they arrive, not after waiting out the bound."""
    shed, served = flood(server.config.grpc_url, BY_WAIT, 300, texts=16)  # its batch limit
    assert np.median(shed) < 0.5 * np.median(served)  # refused as they arrive, while the rest wait their turn
    print(f"300 requests of 16 texts at once, {WAIT_S} s bound: {len(served)} served (median "
          f"{np.median(served) * 1e3:.0f} ms), {len(shed)} refused (median {np.median(shed) * 1e3:.0f} ms, "
          f"max {max(shed) * 1e3:.0f} ms to refuse)")  # fmt: skip


class CountingPolicy(RetryPolicy):
    """A RetryPolicy that records each backoff it is asked for."""

    backoffs: list = []

    def backoff_s(self, attempt: int) -> float:
        self.backoffs.append(attempt)
        return super().backoff_s(attempt)


def test_the_client_backs_off_and_gets_everything_done(server):
    texts = [f"{i} {TEXT}" for i in range(800)]
    retry = CountingPolicy(attempts=50, initial_backoff_s=0.02, max_backoff_s=0.5)
    with EmbedClient(server.config.grpc_url, BY_WAIT, retry=retry, concurrency=200) as client:
        out = client.embed(texts, batch_size=1)
    assert out.shape == (800, 64) and np.isfinite(out).all()
    assert CountingPolicy.backoffs  # it did meet the bound, and got through by backing off
    print(f"800 requests, 200 at a time: all served after {len(CountingPolicy.backoffs)} backoffs")
