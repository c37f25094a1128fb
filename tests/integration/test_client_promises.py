"""What the clients promise, against a real tritonserver: an unknown model is NotFound at once (no retries, no
ejection, and the CLI says so); a model being reloaded is an outage, told apart through readiness; a call that
gives up stops the server's work on it; and after a SIGKILL, no request fails once the server is ready again."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import threading
import time

import pytest
import tritonclient.grpc as grpcclient

from nestrank.clients.cli import rerank_main
from nestrank.clients.embed import AsyncEmbedClient, EmbedClient
from nestrank.clients.rerank import RerankClient
from nestrank.clients.transport import NO_RETRIES, RetryPolicy
from nestrank.export.embedder import export_embedder
from nestrank.protocol.errors import DeadlineExceededError, ModelNotFoundError, NestrankError, UnavailableError
from nestrank.protocol.headers import ADMIN_KEY_HEADER, grpc_header
from nestrank.serving.launcher.server import ServerConfig, TritonServer
from nestrank.texts import realistic_texts
from tests.names import MINILM

pytestmark = pytest.mark.slow


class CountingPolicy(RetryPolicy):
    """The default policy, counting the backoffs it is asked for."""

    backoffs: list = []

    def backoff_s(self, attempt: int) -> float:
        self.backoffs.append(attempt)
        return super().backoff_s(attempt)


@pytest.fixture(scope="module")
def own_server(minilm_dir, tmp_path_factory):
    """A server of our own, with one embedder, for the tests that kill or reload."""
    repo = tmp_path_factory.mktemp("client-promises")
    export_embedder(minilm_dir, MINILM, repo, log=lambda _: None)
    with TritonServer(ServerConfig.on_free_ports(repo)) as running:
        yield running


def statistics(server: TritonServer, model: str) -> tuple[int, int]:
    """(requests the model has finished, served or failed, cancelled ones included; texts it has run), from Triton's
    statistics (an admin API)."""
    client = grpcclient.InferenceServerClient(server.config.grpc_url)
    headers = {grpc_header(ADMIN_KEY_HEADER): server.config.admin_key}
    stats = client.get_inference_statistics(model, as_json=True, headers=headers)["model_stats"][0]
    finished = sum(int(stats["inference_stats"][kind].get("count", 0)) for kind in ("success", "fail"))
    return finished, int(stats.get("inference_count", 0))


def test_an_unknown_model_is_not_found_at_once(grpc_url, capsys):
    CountingPolicy.backoffs = []
    with RerankClient(grpc_url, "kalm-reranker-v1-nano", retry=CountingPolicy()) as client:
        with pytest.raises(ModelNotFoundError, match="unknown model: 'kalm-reranker-v1-nano'"):
            client.rerank("which planet is red?", ["Mars is red."])
        endpoint = client._client._endpoints.endpoints[0]
        assert CountingPolicy.backoffs == [] and endpoint.failures == 0  # final: not retried, not ejected
    with EmbedClient(grpc_url, "all-minilm-l6-v2-typo") as client:
        with pytest.raises(ModelNotFoundError):
            client.embed(["hello"])
    # As a new user would try it (was: "UnavailableError: Request for unknown model", after four attempts)
    code = rerank_main(["--url", grpc_url, "--model", "kalm-reranker-v1-nano", "--query", "q", "Mars is red."])
    assert code == 1
    assert (
        "ModelNotFoundError: Request for unknown model: 'kalm-reranker-v1-nano' is not found" in capsys.readouterr().err
    )


def test_a_model_being_reloaded_is_unavailable_not_unknown(own_server):
    """--strict-readiness: from the unload until the load has finished the server is not ready, so the model's
    NOT_FOUND is an outage of this endpoint (retried, elsewhere if there is one), never a final NotFound."""
    url = own_server.config.grpc_url
    outcomes = []
    try:
        assert own_server.admin("POST", f"/v2/repository/models/{MINILM}/unload") == 200
        assert not own_server.is_ready()
        with EmbedClient(url, MINILM, retry=NO_RETRIES) as client:
            with pytest.raises(UnavailableError, match="not ready"):
                client.embed(["unloaded"])
            loading = threading.Thread(target=own_server.admin, args=("POST", f"/v2/repository/models/{MINILM}/load"))
            loading.start()
            while loading.is_alive():
                try:
                    client.embed(["while it loads"])
                    outcomes.append("ok")
                except NestrankError as err:
                    outcomes.append(type(err).__name__)
                time.sleep(0.02)
            loading.join()
    finally:
        own_server.admin("POST", f"/v2/repository/models/{MINILM}/load")
    with EmbedClient(url, MINILM) as client:
        assert client.embed(["loaded"]).shape == (1, 384)
    assert "ModelNotFoundError" not in outcomes and "UnavailableError" in outcomes
    print(f"calls while {MINILM} loaded: {collections.Counter(outcomes)}")


def test_a_call_that_gives_up_stops_the_servers_work(server):
    """A 2,048-text embed (64 requests, 4 at a time) with a 1 s deadline: when it gives up, the requests it had not
    sent are never sent and those in flight are cancelled, which Triton counts as failed and drops from its queue
    (was: the other requests went on being sent, each with a deadline of its own, long after the call had failed)."""
    texts = realistic_texts(2048, seed=5)
    before = statistics(server, MINILM)

    async def give_up() -> tuple[int, int]:
        async with AsyncEmbedClient(server.config.grpc_url, MINILM, timeout_s=1.0, concurrency=4) as client:
            with pytest.raises(DeadlineExceededError):
                await client.embed(texts, batch_size=32)
            await asyncio.sleep(1)  # the cancellations land
            settled = await asyncio.to_thread(statistics, server, MINILM)
            await asyncio.sleep(3)  # an app's loop goes on: nothing of that call may go on with it
            return settled, await asyncio.to_thread(statistics, server, MINILM)

    settled, later = asyncio.run(give_up())
    requests, ran = later[0] - before[0], later[1] - before[1]
    print(f"embed gave up after 1 s: the server finished {requests} of its 64 requests, ran {ran} of 2,048 texts")
    assert later[0] == settled[0] and requests < 64  # nothing more arrived once the call had given up


def test_no_request_fails_once_readiness_is_back_after_a_sigkill(own_server):
    """Two long-lived clients keep calling, each on a thread of its own, while tritonserver is SIGKILLed and
    restarted by the launcher: one with the default retries, one that sends each request once, every 25 ms.
    Requests fail while the server is down, and none once it reports ready (was: a channel waited out gRPC's
    reconnect backoff, and failed requests for up to 1.2 s after readiness)."""
    url = own_server.config.grpc_url
    outcomes: list[tuple[float, str, str]] = []  # (started, client, outcome)
    stop = threading.Event()

    def keep_calling(name: str, client: EmbedClient) -> None:
        client.embed(["warm"])
        while not stop.is_set():
            started = time.monotonic()
            try:
                client.embed(["still there?"])
                outcomes.append((started, name, "ok"))
            except (UnavailableError, DeadlineExceededError) as err:
                outcomes.append((started, name, type(err).__name__))
            time.sleep(0.025)

    with EmbedClient(url, MINILM) as retrying, EmbedClient(url, MINILM, retry=NO_RETRIES) as once:
        callers = [
            threading.Thread(target=keep_calling, args=item) for item in (("retrying", retrying), ("once", once))
        ]
        for caller in callers:
            caller.start()
        time.sleep(1)
        victim = own_server._process
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        while own_server._process is victim or not own_server.is_ready():
            time.sleep(0.02)
            assert time.monotonic() - killed_at < 120, "the server did not come back"
        ready = time.monotonic()
        time.sleep(3)
        stop.set()
        for caller in callers:
            caller.join(60)
    down = [o for started, _, o in outcomes if killed_at < started < ready and o != "ok"]
    after = [(round(started - ready, 2), name, o) for started, name, o in outcomes if started >= ready and o != "ok"]
    print(f"SIGKILL: ready again after {ready - killed_at:.1f} s; {len(down)} requests failed before, {len(after)} "
          f"of {sum(started >= ready for started, _, _ in outcomes)} after readiness "
          f"{dict(collections.Counter(name for _, name, _ in after))}, the last {max([0, *(a[0] for a in after)])} s "
          "after")  # fmt: skip
    assert down, "no request failed while the server was down: the kill proved nothing"
    assert after == []
