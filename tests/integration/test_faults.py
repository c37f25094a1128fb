"""Faults against real servers: a killed backend stub (readiness turns false, the model is reloaded), a killed
tritonserver (restarted, its shared memory removed), and a client that keeps a 3,000-text embed call whole
across two servers while one is killed with SIGKILL and comes back. The reranker's faults under traffic:
test_rerank_faults.py."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from nestrank.clients.embed import EmbedClient
from nestrank.serving.launcher.process_tree import running
from nestrank.serving.launcher.server import ServerConfig, TritonServer, stub_models, stubs_with_prefix
from nestrank.texts import realistic_texts
from tests.names import MINILM, TINY_DECODER

pytestmark = pytest.mark.slow


def start(repository, folder, *models) -> TritonServer:
    for model in models:
        shutil.copytree(repository / model, folder / "repo" / model)
    config = ServerConfig.on_free_ports(folder / "repo")
    return TritonServer(config).start()


def wait_for(condition, timeout_s: float, state=lambda: None) -> float:
    """Seconds until `condition()` held; fails after `timeout_s` (a bound for a hung server, not a speed claim),
    showing `state()`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s: {state()}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_killed_stub_turns_readiness_false_and_its_model_is_reloaded(small_repository, tmp_path):
    server = start(small_repository, tmp_path, TINY_DECODER)
    try:
        with EmbedClient(server.config.grpc_url, TINY_DECODER) as client:
            before = client.embed(["still the same answer"])
            (stub,) = stub_models(server.process.pid)
            os.kill(stub, signal.SIGKILL)
            not_ready_s = wait_for(lambda: not server.model_ready(TINY_DECODER) and not server.is_ready(), 60)
            ready_again_s = wait_for(lambda: server.model_ready(TINY_DECODER) and server.is_ready(), 120)
            print(f"stub killed: not ready after {not_ready_s:.2f} s, ready again {ready_again_s:.2f} s later")
            np.testing.assert_allclose(client.embed(["still the same answer"]), before, atol=1e-6)
        assert stub not in stub_models(server.process.pid)
    finally:
        server.stop()


def test_nothing_of_a_killed_server_survives_its_successors_start(small_repository, tmp_path):
    """SIGKILL leaves tritonserver's stubs running (re-parented to init) and its regions in /dev/shm: the watchdog
    kills and removes them before the successor starts, and stop() does the same for the last one."""
    server = start(small_repository, tmp_path, TINY_DECODER)
    at_successor_start = []
    launch = server._launch

    def recording_launch():
        dead = server.regions
        directory_left = dead.private and dead.directory.exists()
        at_successor_start.append((stubs_with_prefix(dead.prefix), dead.paths(), directory_left))
        return launch()

    server._launch = recording_launch
    try:
        first, dead = server.process, server.regions
        stubs, regions = stubs_with_prefix(dead.prefix), dead.paths()
        assert stubs and regions
        first.send_signal(signal.SIGKILL)
        back_s = wait_for(lambda: server.process is not first and server.is_ready(), 120)
        time.sleep(1.0)
        survivors = [pid for pid in stubs if running(pid)]  # orphans the stub's own parent check would leave
        (orphans, regions_left, directory_left) = at_successor_start[0]
        print(f"tritonserver SIGKILLed with {len(stubs)} stub(s) and {len(regions)} region(s): at the "
              f"successor's start {len(orphans)} orphans, {len(regions_left)} regions left; ready again after "
              f"{back_s:.2f} s")  # fmt: skip
        assert orphans == [] and regions_left == [] and not directory_left and survivors == []
        with EmbedClient(server.config.grpc_url, TINY_DECODER) as client:
            assert client.embed(["after the restart"]).shape == (1, 64)
        last = server.regions
    finally:
        server.stop()
    assert stubs_with_prefix(last.prefix) == [] and last.paths() == []
    assert not (last.private and last.directory.exists())


def test_an_embed_call_survives_a_server_killed_and_restarted_mid_call(repository, tmp_path_factory):
    servers = [start(repository, tmp_path_factory.mktemp(f"replica{i}"), MINILM) for i in range(2)]
    texts = [" ".join(t.split()[:24]) for t in realistic_texts(3000, seed=77)]
    urls = [s.config.grpc_url for s in servers]
    try:
        with EmbedClient(urls, MINILM, concurrency=4) as client:
            started = time.monotonic()
            expected = client.embed(texts, batch_size=32)
            undisturbed_s = time.monotonic() - started
            victim = servers[0]._process
            killer = threading.Timer(undisturbed_s / 4, victim.send_signal, args=(signal.SIGKILL,))
            killer.start()
            started = time.monotonic()
            got = client.embed(texts, batch_size=32)
            disturbed_s = time.monotonic() - started
            killer.join()
        assert victim.poll() is not None, "the kill came after the call: it proved nothing"
        np.testing.assert_allclose(got, expected, atol=1e-5)  # complete, in order, equal
        wait_for(lambda: servers[0]._process is not victim and servers[0].is_ready(), 60)
        print(f"3,000 texts over two servers: {undisturbed_s:.1f} s undisturbed, {disturbed_s:.1f} s with one "
              "killed (SIGKILL) and restarted mid-call")  # fmt: skip
    finally:
        for server in servers:
            server.stop()
