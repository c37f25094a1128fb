"""`nestrank serve`'s launcher against the real binary: readable failure when a model cannot load."""

import shutil

import pytest

from nestrank.serving.launcher import ServerConfig, ServerStartError, TritonServer, free_ports
from tests.integration.conftest import TINY_DECODER

pytestmark = pytest.mark.slow


def test_a_model_that_fails_to_load_stops_the_server_with_its_reason(repository, tmp_path):
    broken = tmp_path / "repo"
    shutil.copytree(repository / TINY_DECODER, broken / TINY_DECODER)
    (broken / TINY_DECODER / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    grpc_port, http_port, metrics_port = free_ports(3)
    config = ServerConfig(broken, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    with pytest.raises(ServerStartError) as err:
        TritonServer(config).start()
    message = str(err.value)
    assert "tritonserver exited" in message
    assert TINY_DECODER in message and "UNAVAILABLE" in message


def test_serve_command_runs_until_sigterm_and_exits_cleanly(repository, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    repo = tmp_path / "repo"
    shutil.copytree(repository / TINY_DECODER, repo / TINY_DECODER)
    grpc_port, http_port, metrics_port = free_ports(3)
    ports = ["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    cmd = [sys.executable, "-m", "nestrank", "serve", "--repository", str(repo), "--no-default-models", *ports]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and process.poll() is None and not ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as r:
                    ready = r.status == 200
            except OSError:
                time.sleep(0.5)
        assert ready, process.stdout.read() if process.poll() is not None else "not ready in 120 s"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert "nestrank: serving" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
