"""What a launched tritonserver is: addresses, keys, TLS, what the models are set to serve with (limits, the passage
store: served.py), extra environment. Validated on construction."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nestrank.serving.launcher.served import Override

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Variables models read before limits were config parameters: refused, so that a setting never silently does nothing.
MOVED_TO_CONFIG = {
    "NESTRANK_PASSAGE_STORE": "set passage_store= (nestrank serve --passage-store)",
    "NESTRANK_PASSAGE_CACHE_BYTES": "set overrides=(Override.limit('passage_cache_bytes=...'),) (--limit)",
    "NESTRANK_ORT_THREADS": "set overrides=(Override.limit('intra_op_threads=...'),) (--limit)",
}


class ServerStartError(RuntimeError):
    """tritonserver exited or never became ready; the message carries its own explanation."""


@dataclass(frozen=True)
class TlsConfig:
    """gRPC TLS: the server's certificate and key (PEM files); `client_ca` turns on mutual TLS, checking client
    certificates against that CA."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def __post_init__(self):
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS {name}: {path} is not a file")


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    http_host: str | None = None  # an IP address; default: host (HTTP has no TLS: keep it on loopback, or proxy it)
    metrics_host: str | None = None  # an IP address; default: http_host (Prometheus may scrape where HTTP is closed)
    tritonserver: Path | None = None  # None: the binary bundled in the nvidia-pytriton wheel
    response_cache_bytes: int = 0
    startup_timeout_s: float = 300.0
    api_key: str | None = None  # when set, inference / model config / metadata need it (header nestrank-api-key)
    # Opens the admin protocols, shared memory included (a client that registers a region can crash the server, so
    # it is as trusted as one that unloads models); None: a random key only this launcher knows.
    admin_key: str | None = None
    tls: TlsConfig | None = None
    supervise: bool = True  # restart a crashed server, reload models whose stub died
    # tritonserver in a mount namespace of its own whose /dev/shm is a directory only its user can enter, so that
    # no other local user can ever open the Python backend's regions. None: when this host allows it (root, or
    # unprivileged user namespaces), with a warning otherwise; True: required; False: never.
    private_shm: bool | None = None
    # Limits set at serve time, written into the served copy of the models' configs (served.py): what
    # `nestrank serve --limit [MODEL:]NAME=VALUE` gives.
    overrides: tuple[Override, ...] = ()
    # The passage store of every reranker served (None: as exported; "" there is LMDB in the user's cache). Its
    # password reaches the models through the environment, never their configs (nor this config's repr).
    passage_store: str | None = field(default=None, repr=False)
    # Extra environment variables for tritonserver and its Python backend stubs.
    environment: Mapping[str, str] = field(default_factory=dict, hash=False)
    extra_args: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "model_repository", Path(self.model_repository).resolve())
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise ValueError(f"{name} must be in 1..65535, got {port}")
        if len({self.grpc_port, self.http_port, self.metrics_port}) != 3:
            raise ValueError("grpc_port, http_port and metrics_port must differ")
        for name, address in (("http_host", self.http_host or self.host), ("metrics_host", self.metrics_address)):
            try:
                ipaddress.ip_address(address)
            except ValueError:
                # Triton's HTTP server would bind 255.255.255.255 for a name such as "localhost", and never answer.
                raise ValueError(f"{name} must be an IP address (Triton's HTTP server takes no names), "
                                 f"got {address!r}") from None  # fmt: skip
        if self.response_cache_bytes < 0:
            raise ValueError("response_cache_bytes must be >= 0")
        for name in ("api_key", "admin_key"):
            key = getattr(self, name)
            if key is not None and (len(key) < 16 or not key.isascii() or not key.isprintable() or "," in key):
                raise ValueError(f"{name} must be at least 16 printable ASCII characters without commas")
        if self.admin_key is None:
            object.__setattr__(self, "admin_key", secrets.token_urlsafe(32))
        for name, value in dict(self.environment).items():
            if not isinstance(name, str) or not name or "=" in name or "\0" in name:
                raise ValueError(f"environment: {name!r} is not a variable name")
            if not isinstance(value, str) or "\0" in value:
                raise ValueError(f"environment: {name} must be a string without NUL characters")
        for name in set(self.environment) & set(MOVED_TO_CONFIG):
            raise ValueError(f"environment: the models no longer read {name}; {MOVED_TO_CONFIG[name]}")
        object.__setattr__(self, "environment", types.MappingProxyType(dict(self.environment)))
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if not all(isinstance(o, Override) for o in self.overrides):
            raise ValueError("overrides must be Override values (Override.limit('max_candidates=200'))")

    @classmethod
    def on_free_ports(cls, model_repository: str | Path, **settings) -> ServerConfig:
        """On loopback ports the OS says are free now (tests and benchmarks that start their own server), with a
        passage store of the server's own (memory://) unless `passage_store` names one: runs never share states
        through the user's cache."""
        grpc_port, http_port, metrics_port = free_ports(3)
        settings.setdefault("passage_store", "memory://")
        return cls(Path(model_repository), grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                   **settings)  # fmt: skip

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"{self.http_host or self.host}:{self.http_port}"

    @property
    def metrics_address(self) -> str:
        return self.metrics_host or self.http_host or self.host

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.http_host or self.host}:{self.metrics_port}/metrics"

    @property
    def exposed_without_key(self) -> bool:
        return self.api_key is None and (self.host not in LOOPBACK or (self.http_host or self.host) not in LOOPBACK)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS says are free now (for tests and benchmarks that start their own server)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
