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
