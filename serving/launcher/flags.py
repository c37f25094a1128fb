"""tritonserver's command line: addresses, the restricted-API flags that keep it closed by default, TLS."""

from __future__ import annotations

from pathlib import Path

from nestrank.protocol.headers import ADMIN_KEY_HEADER, API_KEY_HEADER
from nestrank.serving.launcher.config import ServerConfig, TlsConfig
from nestrank.serving.launcher.install import TritonInstall

# The protocols that change the server (or read its memory): behind the admin key, always.
ADMIN_PROTOCOLS = ("shared-memory", "model-repository", "trace", "logging")
# The ones that only read: open like metrics and health without an API key, behind it with one. Statistics and
# model config are what load testers (perf_analyzer, AIPerf) read before and after each measurement.
API_KEY_PROTOCOLS = ("inference", "model-config", "metadata", "statistics")


def restriction_flags(config: ServerConfig) -> list[str]:
    """Triton's own restricted-API flags: the admin protocols behind the admin key, and (with an API key)
    inference and the read-only protocols behind the API key. Triton takes the keys on its command line only."""
    groups = [(ADMIN_PROTOCOLS, ADMIN_KEY_HEADER, config.admin_key)]
    if config.api_key:
        groups.append((API_KEY_PROTOCOLS, API_KEY_HEADER, config.api_key))
    flags = []
    for protocols, header, key in groups:
        value = f"{','.join(protocols)}:{header}={key}"
        flags += [f"--grpc-restricted-protocol={value}", f"--http-restricted-api={value}"]
    return flags


def tls_flags(tls: TlsConfig | None) -> list[str]:
    if tls is None:
        return []
    flags = [f"--grpc-server-cert={tls.cert}", f"--grpc-server-key={tls.key}"]
    if tls.client_ca is not None:
        return flags + ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={tls.client_ca}"]
    return flags + ["--grpc-use-ssl=true"]


def triton_command(
    config: ServerConfig,
    install: TritonInstall,
    backend_dir: Path | None,
    shm_prefix: str,
    repository: Path | None = None,
) -> list[str]:
    """The tritonserver command line; `shm_prefix` names the Python backend's shared-memory regions, `repository`
    is what it serves (default: the config's; the launcher passes the served copy when there are overrides)."""
    http_host = config.http_host or config.host
    cmd = [
        str(install.binary),
        f"--model-repository={repository or config.model_repository}",
        f"--grpc-address={config.host}", f"--grpc-port={config.grpc_port}",
        f"--http-address={http_host}", f"--http-port={config.http_port}",
        f"--metrics-address={config.metrics_address}", f"--metrics-port={config.metrics_port}",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--model-control-mode=explicit", "--load-model=*",  # lets the watchdog reload one model
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]  # fmt: skip
    if backend_dir is not None:
        cmd.append(f"--backend-directory={backend_dir}")
    if config.response_cache_bytes:
        cmd += [f"--cache-directory={install.caches}", f"--cache-config=local,size={config.response_cache_bytes}"]
    return cmd + restriction_flags(config) + tls_flags(config.tls) + list(config.extra_args)
