import os

import pytest

from nestrank.serving.launcher import (
    ServerConfig,
    ServerStartError,
    TlsConfig,
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


def test_admin_protocols_are_closed_by_default_behind_a_random_key(tmp_path):
    config = ServerConfig(tmp_path)
    cmd = TritonServer(config).command(find_tritonserver(), None)
    admin = "shared-memory,model-repository,statistics,trace,logging"
    assert f"--grpc-restricted-protocol={admin}:nestrank-admin-key={config.admin_key}" in cmd
    assert f"--http-restricted-api={admin}:nestrank-admin-key={config.admin_key}" in cmd
    assert len(config.admin_key) >= 32 and ServerConfig(tmp_path).admin_key != config.admin_key
    assert not any("inference" in flag for flag in cmd)  # no API key: inference stays open (on 127.0.0.1)
    assert "--model-control-mode=explicit" in cmd and "--load-model=*" in cmd


def test_api_key_shared_memory_and_tls_flags(tmp_path):
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("pem")
    tls = TlsConfig(tmp_path / "cert.pem", tmp_path / "key.pem", client_ca=tmp_path / "ca.pem")
    config = ServerConfig(tmp_path, api_key="k" * 20, allow_shared_memory=True, tls=tls, extra_args=("--log-info=0",))
    cmd = TritonServer(config).command(find_tritonserver(), None)
    assert f"--grpc-restricted-protocol=inference,model-config,metadata:nestrank-api-key={'k' * 20}" in cmd
    assert not any(flag.startswith("--grpc-restricted-protocol=shared-memory") for flag in cmd)
    assert "--grpc-use-ssl-mutual=true" in cmd and f"--grpc-root-cert={tmp_path / 'ca.pem'}" in cmd
    assert cmd[-1] == "--log-info=0"


def test_keys_and_tls_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="api_key must be at least 16"):
        ServerConfig(tmp_path, api_key="short")
    with pytest.raises(ValueError, match="admin_key must be .* without commas"):
        ServerConfig(tmp_path, admin_key="a,b" * 10)
    with pytest.raises(ValueError, match="TLS cert: .* is not a file"):
        TlsConfig(tmp_path / "missing.pem", tmp_path / "key.pem")


def test_listening_beyond_loopback_without_a_key_warns(tmp_path, capsys):
    from nestrank.serve import main

    assert main(["--repository", str(tmp_path / "missing"), "--host", "0.0.0.0", "--no-default-models"]) == 1
    assert "WARNING: listening on 0.0.0.0 without --api-key" in capsys.readouterr().err
    assert main(["--repository", str(tmp_path / "missing"), "--no-default-models"]) == 1
    assert "WARNING" not in capsys.readouterr().err
