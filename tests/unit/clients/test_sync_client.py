"""The sync clients' lifecycle, over real gRPC to a local server that speaks Triton's protocol: close() from any
thread, as often as you like, never hangs and fails the calls still running; a forgotten client is finalized;
Ctrl-C cancels the call, down to its gRPC request. Every wait here is bounded, so a regression fails, not hangs."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time

import grpc
import pytest

from nestrank.clients.embed import EmbedClient
from nestrank.clients.transport import NO_RETRIES, RetryPolicy
from nestrank.protocol.errors import ClientClosedError
from tests.unit.clients.local_triton import LocalTriton, embeddings, fail, hold

BOUND_S = 10.0  # far above what any of these takes; only a hang reaches it


@pytest.fixture
def server():
    running = LocalTriton()
    yield running
    running.stop()


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nestrank-client"]


def in_thread(fn) -> tuple[threading.Thread, list]:
    """Runs `fn` on a daemon thread; the list gets its result or its exception."""
    outcome: list = []

    def target():
        try:
            outcome.append(fn())
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_close_wakes_a_thread_sleeping_in_a_retry_backoff(server):
    """Was: the thread never returned from `.result()` once close() had stopped the loop."""
    server.answer = fail(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size")  # overload: back off
    client = EmbedClient(server.url, "m", retry=RetryPolicy(attempts=5, initial_backoff_s=60, max_backoff_s=60))
    thread, outcome = in_thread(lambda: client.embed(["x"]))
    server.wait_for(lambda: len(server.requests()) == 1)
    time.sleep(0.1)  # now in its 30-60 s backoff
    client.close()
    thread.join(BOUND_S)
    assert not thread.is_alive() and isinstance(outcome[0], ClientClosedError)


def test_close_fails_a_call_on_the_wire_and_cancels_its_request(server):
    server.answer = hold
    client = EmbedClient(server.url, "m", retry=NO_RETRIES)
    thread, outcome = in_thread(lambda: client.embed(["x"]))
    server.wait_for(lambda: len(server.requests()) == 1)
    client.close()
    thread.join(BOUND_S)
    assert not thread.is_alive() and isinstance(outcome[0], ClientClosedError)
    server.wait_for(lambda: len(server.requests("cancelled")) == 1)


def test_threads_closing_at_once_all_return(server):
    server.answer = hold
    client = EmbedClient(server.url, "m", retry=NO_RETRIES)
    callers = [in_thread(lambda: client.embed(["x"])) for _ in range(3)]
    server.wait_for(lambda: len(server.requests()) == 3)
    start = threading.Barrier(4)
    closers = [in_thread(lambda: (start.wait(), client.close())) for _ in range(4)]
    for thread, _ in closers + callers:
        thread.join(BOUND_S)
        assert not thread.is_alive()
    assert all(isinstance(outcome[0], ClientClosedError) for _, outcome in callers)
    assert all(not isinstance(outcome[0], BaseException) for _, outcome in closers)
    assert loop_threads() == []


def test_close_is_idempotent_and_later_calls_fail_typed(server):
    client = EmbedClient(server.url, "m")
    assert client.embed(["x"]).shape == (1, 8)
    client.close()
    client.close()
    with pytest.raises(ClientClosedError):
        client.embed(["x"])  # was: RuntimeError from a closed event loop
    with pytest.raises(ClientClosedError):
        client.info()


def test_a_forgotten_client_is_finalized(server):
    client = EmbedClient(server.url, "m")
    client.embed(["x"])  # its channel is open
    (thread,) = loop_threads()
    del client
    gc.collect()
    thread.join(BOUND_S)
    assert not thread.is_alive()  # was: thread, loop and channel leaked


def test_ctrl_c_cancels_the_call_and_its_request(server):
    # Python's own Ctrl-C handler, whatever this process inherited: a shell's background job starts with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    server.answer = hold
    client = EmbedClient(server.url, "m", retry=NO_RETRIES)
    interrupter = threading.Thread(
        target=lambda: (server.wait_for(lambda: len(server.requests()) == 1), os.kill(os.getpid(), signal.SIGINT))
    )
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            client.embed(["x"])
        server.wait_for(lambda: len(server.requests("cancelled")) == 1)  # was: it ran on until its deadline
        server.answer = embeddings
        assert client.embed(["still usable"]).shape == (1, 8)
    finally:
        interrupter.join(BOUND_S)
        client.close()
        signal.signal(signal.SIGINT, previous)
