"""`nestrank serve`'s launcher against the real binary: readable failure when a model cannot load; a model exported
by an older nestrank keeps serving."""

import shutil

import pytest

from nestrank.serving.launcher import ServerConfig, ServerStartError, TritonServer, free_ports
from tests.names import TINY_DECODER

pytestmark = pytest.mark.slow


def test_a_model_that_fails_to_load_stops_the_server_with_its_reason(repository, tmp_path):
    broken = tmp_path / "repo"
    shutil.copytree(repository / TINY_DECODER, broken / TINY_DECODER)
    (broken / TINY_DECODER / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    config = ServerConfig.on_free_ports(broken)
    with pytest.raises(ServerStartError) as err:
        TritonServer(config).start()
    message = str(err.value)
    assert "tritonserver exited" in message
    assert TINY_DECODER in message and "UNAVAILABLE" in message


def test_serve_command_serves_a_model_an_older_nestrank_exported_until_sigterm(repository, tmp_path):
    """An upgrade keeps an exported repository serving: its model.py imports the installed glue; serve warns."""
    import json
    import queue
    import signal
    import subprocess
    import sys
    import threading

    from nestrank.clients.embed import EmbedClient
    from nestrank.export.triton_config import read_config, write_config
    from nestrank.protocol.headers import VERSION_PARAMETER

    repo = tmp_path / "repo"
    shutil.copytree(repository / TINY_DECODER, repo / TINY_DECODER)
    config = read_config(repo / TINY_DECODER)
    config.parameters[VERSION_PARAMETER].string_value = json.dumps("0.0.1")
    write_config(config, repo / TINY_DECODER)
    grpc_port, http_port, metrics_port = free_ports(3)
    ports = ["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    cmd = [sys.executable, "-m", "nestrank", "serve", "--repository", str(repo), "--no-default-models", *ports]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        seen = []
        while not any("nestrank: serving" in line for line in seen):  # printed once Triton is ready
            seen.append(lines.get(timeout=120))
        assert any(f"WARNING: {TINY_DECODER} was exported by nestrank 0.0.1" in line for line in seen)
        with EmbedClient(f"127.0.0.1:{grpc_port}", TINY_DECODER) as client:
            assert client.embed(["still serving"]).shape[0] == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
