import os

import pytest

from nestrank.serving.launcher import (
    ServerConfig,
    ServerStartError,
    TritonServer,
    find_tritonserver,
    prepare_backends,
    server_environment,
)


def test_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="must differ"):
        ServerConfig(tmp_path, grpc_port=9000, http_port=9000)
    with pytest.raises(ValueError, match="grpc_port must be in 1..65535"):
        ServerConfig(tmp_path, grpc_port=0)
    assert ServerConfig(tmp_path).grpc_url == "127.0.0.1:8001"


def test_finds_the_bundled_server_and_prepares_the_python_backend(tmp_path):
    install = find_tritonserver()
    assert install.binary.name == "tritonserver" and os.access(install.binary, os.X_OK)
    backends = prepare_backends(install, tmp_path)
    python = backends / "python"
    assert (python / "libtriton_python.so").exists()
    assert (python / "triton_python_backend_stub").exists()


def test_environment_points_the_stub_at_this_interpreter():
    env = server_environment(find_tritonserver())
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"]
    assert any("site-packages" in d for d in env["NESTRANK_SITE_DIRS"].split(os.pathsep))


def test_command_binds_the_configured_addresses(tmp_path):
    config = ServerConfig(tmp_path, grpc_port=9101, http_port=9100, metrics_port=9102, response_cache_bytes=1024)
    install = find_tritonserver()
    cmd = TritonServer(config).command(install, tmp_path / "backends")
    for flag in ("--grpc-address=127.0.0.1", "--grpc-port=9101", "--http-port=9100", "--metrics-port=9102"):
        assert flag in cmd
    assert "--cache-config=local,size=1024" in cmd


def test_missing_binary_and_repository_are_reported(tmp_path):
    with pytest.raises(ServerStartError, match="does not exist"):
        find_tritonserver(tmp_path / "nope")
    with pytest.raises(ServerStartError, match="model repository .* does not exist"):
        TritonServer(ServerConfig(tmp_path / "missing")).start()
