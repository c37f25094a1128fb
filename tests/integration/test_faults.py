"""Faults against real servers: a killed backend stub (readiness turns false, the model is reloaded), a killed
tritonserver (restarted, its shared memory removed), and a client that keeps a 3,000-text embed call whole
across two servers while one is killed with SIGKILL and comes back."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from nestrank.clients.embed import EmbedClient
from nestrank.serving.launcher import SHM_DIR, ServerConfig, TritonServer, stub_models, stubs_with_prefix
from nestrank.texts import realistic_texts
from tests.names import MINILM, TINY_DECODER

pytestmark = pytest.mark.slow


def start(repository, folder, *models) -> TritonServer:
    for model in models:
        shutil.copytree(repository / model, folder / "repo" / model)
    config = ServerConfig.on_free_ports(folder / "repo")
    return TritonServer(config).start()


def wait_for(condition, timeout_s: float) -> float:
    """Seconds until `condition()` held; fails after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def _parent_arg(pid: int) -> str:
    """A stub's fifth argument: the pid of the tritonserver that started it."""
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[5].decode()
    except (FileNotFoundError, IndexError):
        return ""


def own_regions(server: TritonServer) -> list:
    return sorted(SHM_DIR.glob(f"{server._shm_prefix}*"))


def test_a_killed_stub_turns_readiness_false_and_its_model_is_reloaded(repository, tmp_path):
    server = start(repository, tmp_path, TINY_DECODER)
    try:
        with EmbedClient(server.config.grpc_url, TINY_DECODER) as client:
            before = client.embed(["still the same answer"])
            (stub,) = stub_models(server._process.pid)
            os.kill(stub, signal.SIGKILL)
            not_ready_s = wait_for(lambda: not server.model_ready(TINY_DECODER) and not server.is_ready(), 3)
            ready_again_s = wait_for(lambda: server.model_ready(TINY_DECODER) and server.is_ready(), 60)
            print(f"stub killed: not ready after {not_ready_s:.2f} s, ready again {ready_again_s:.2f} s later")
            np.testing.assert_allclose(client.embed(["still the same answer"]), before, atol=1e-6)
        assert stub not in stub_models(server._process.pid)
    finally:
        server.stop()


def test_a_killed_server_is_restarted_and_its_shared_memory_removed(repository, tmp_path):
    server = start(repository, tmp_path, TINY_DECODER)
    try:
        first = server._process
        regions = own_regions(server)
        assert regions and all(r.stat().st_mode & 0o777 == 0o600 for r in regions)  # private to this user
        first.send_signal(signal.SIGKILL)
        back_s = wait_for(lambda: server._process is not first and server.is_ready(), 60)
        print(f"tritonserver killed: ready again after {back_s:.2f} s")
        assert not set(regions) & set(own_regions(server))  # the dead server's regions are gone
        orphans = [pid for pid in stubs_with_prefix(server._shm_prefix) if str(first.pid) in _parent_arg(pid)]
        assert orphans == []  # and so are its stubs, which outlive a SIGKILLed parent
        with EmbedClient(server.config.grpc_url, TINY_DECODER) as client:
            assert client.embed(["after the restart"]).shape == (1, 64)
    finally:
        server.stop()
    assert own_regions(server) == []


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
