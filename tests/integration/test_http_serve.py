"""`nestrank serve` with its HTTP front, as a user runs it: one subprocess with an API key and TLS. The front speaks
HTTPS with the same certificate, reaches Triton's gRPC over TLS, keeps Triton's HTTP on loopback, answers 503 while
Triton is down (killed) and is ready again once the launcher has restarted it, and is itself restarted if it dies."""

from __future__ import annotations

import os
import signal
import ssl
import time

import httpx
import pytest

from tests.certificates import make_certificates
from tests.names import TINY_DECODER
from tests.serve_process import ServeProcess

pytestmark = pytest.mark.slow
KEY = "serve-front-key-0123456789"


def wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    """Of every thread: the launcher starts tritonserver and the front from threads of their own."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def command_line(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


@pytest.fixture(scope="module")
def serve(small_repository, tmp_path_factory):
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    args = ["--api-key", KEY, "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    with ServeProcess(small_repository, *args) as running:
        running.certs = certs
        yield running


@pytest.fixture(scope="module")
def http(serve):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(
        base_url=serve.api_url, headers=headers, verify=ssl.create_default_context(cafile=serve.certs.ca), timeout=60
    ) as client:
        yield client


def process_named(serve, text: str) -> int:
    (pid,) = [p for p in children(serve.process.pid) if text in command_line(p)]
    return pid


def test_the_front_serves_https_with_the_key_and_triton_http_stays_on_loopback(serve, http):
    line = next(line for line in serve.output if line.startswith("nestrank: serving"))
    assert f"HTTP 127.0.0.1:{serve.http_port}" in line and f"API {serve.api_url}" in line
    assert http.get("/ready").status_code == 200
    response = http.post("/v1/embeddings", json={"model": TINY_DECODER, "input": ["over TLS"]})
    assert response.status_code == 200 and len(response.json()["data"]) == 1  # the gRPC hop is TLS with the key
    assert (
        httpx.get(f"{serve.api_url}/v1/models", verify=ssl.create_default_context(cafile=serve.certs.ca)).status_code
        == 401
    )
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{serve.api_port}/health", timeout=5)  # no plain HTTP
    front = process_named(serve, "nestrank.api")
    assert KEY not in command_line(front)  # the key travels in the environment, not on a command line


def test_a_killed_triton_is_503_until_the_launcher_restarts_it(serve, http):
    triton = process_named(serve, "tritonserver")
    os.kill(triton, signal.SIGKILL)
    down = http.post("/v1/embeddings", json={"model": TINY_DECODER, "input": ["anyone there?"]})
    assert down.status_code == 503 and down.headers["Retry-After"] == "1", down.text
    assert down.json()["error"]["type"] == "server_error"
    assert http.get("/ready").status_code == 503
    wait_for(lambda: http.get("/ready").status_code == 200)
    assert http.post("/v1/embeddings", json={"model": TINY_DECODER, "input": ["back"]}).status_code == 200


def test_a_dead_front_is_restarted(serve, http):
    front = process_named(serve, "nestrank.api")
    os.kill(front, signal.SIGKILL)
    wait_for(lambda: any("the HTTP front exited" in line for line in serve.output), 30)

    def answers() -> bool:
        try:
            return http.get("/ready").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, 60)
    assert process_named(serve, "nestrank.api") != front
