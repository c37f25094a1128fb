"""What one HTTP front is: where Triton is, where the front listens, its key and TLS, and its limits. Validated on
construction; `FrontSettings.from_env()` reads the same names with the prefix `NESTRANK_`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 8080
MAX_INPUTS = 2048  # texts per embeddings request: what the openai SDK and OpenAI's own API allow
MAX_BODY_BYTES = 32 << 20  # 2,048 inputs of ~16 KB each


@dataclass(frozen=True)
class FrontSettings:
    triton_urls: tuple[str, ...] = ("127.0.0.1:8001",)  # Triton gRPC endpoints; the clients fail over across them
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None  # callers send `Authorization: Bearer <key>`; also Triton's key on the gRPC hop
    tls_cert: Path | None = None  # HTTPS for callers (PEM)
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS for callers: client certificates signed by this CA
    triton_ca: Path | None = None  # the gRPC hop over TLS: trust this PEM (Triton's certificate or its CA)
    repository: Path | None = None  # Triton's model repository, when on this host: lists models, counts tokens
    models: tuple[str, ...] = ()  # model names to list when there is no repository to read
    embed_model: str | None = None  # for routes without a model field (TEI); default: the first embedder by name
    rerank_model: str | None = None  # likewise for rerankers
    max_body_bytes: int = MAX_BODY_BYTES
    max_inputs: int = MAX_INPUTS
    request_concurrency: int = 4  # Triton requests one HTTP request may have in flight (a 2,048-input batch splits)
    concurrency: int = 256  # Triton requests in flight per model; past Triton's queue it sheds (429), not the front
    timeout_s: float = 300.0  # one HTTP request, end to end
    retry_after_s: int = 1  # what a 429 / 503 tells callers to wait
    otlp_endpoint: str | None = None  # OTLP/HTTP collector for traces, e.g. http://127.0.0.1:4318 (else OTEL_* vars)
    extra: dict = field(default_factory=dict, hash=False)  # uvicorn settings for tests and benchmarks

    def __post_init__(self):
        if not self.triton_urls or not all(isinstance(u, str) and u for u in self.triton_urls):
            raise ValueError("triton_urls: give at least one host:port")
        object.__setattr__(self, "triton_urls", tuple(self.triton_urls))
        object.__setattr__(self, "models", tuple(self.models))
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None) or (self.tls_client_ca and not self.tls_cert):
            raise ValueError("tls_cert and tls_key go together (and tls_client_ca needs them)")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "triton_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: {path} is not a file")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key: empty; leave it out to run without a key")
        for name in ("max_body_bytes", "max_inputs", "request_concurrency", "concurrency", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.otlp_endpoint is not None and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ValueError(f"otlp_endpoint must be an http:// or https:// URL, got {self.otlp_endpoint!r:.80}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"
