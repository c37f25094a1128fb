"""`python -m nestrank.api`: the HTTP front on uvicorn. `nestrank serve` starts and supervises it next to Triton;
run it alone to put it in front of Triton servers elsewhere (`--triton` repeatable: the clients fail over).

Secrets come from the environment, never the command line (other local users read command lines):
NESTRANK_API_KEY is the key callers send as `Authorization: Bearer <key>` and the key of the gRPC hop to Triton.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

from nestrank.api.settings import DEFAULT_PORT, MAX_BODY_BYTES, MAX_INPUTS, FrontSettings


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m nestrank.api", description="nestrank's HTTP front (OpenAI, "
                                "Cohere/Jina, TEI and NIM routes) over Triton gRPC.")  # fmt: skip
    p.add_argument("--triton", action="append", metavar="HOST:PORT",
                   help="a Triton gRPC endpoint (repeatable; default 127.0.0.1:8001)")  # fmt: skip
    p.add_argument("--host", default=env("NESTRANK_API_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("NESTRANK_API_PORT", DEFAULT_PORT)))
    p.add_argument("--repository", type=Path, help="Triton's model repository on this host: lists the models and "
                   "gives the tokenizers that count usage tokens")  # fmt: skip
    p.add_argument("--model", action="append", default=[], help="a model to list without a repository (repeatable)")
    p.add_argument("--embed-model", help="the embedder of routes that name none (TEI); default: the first by name")
    p.add_argument("--rerank-model", help="the reranker of routes that name none; default: the first by name")
    p.add_argument("--tls-cert", type=Path, help="HTTPS: the certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="HTTPS: the key (PEM)")
    p.add_argument("--tls-ca", type=Path, help="mutual TLS: accept client certificates signed by this CA (PEM)")
    p.add_argument("--triton-ca", type=Path, help="Triton's gRPC is TLS: trust this certificate or CA (PEM)")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    p.add_argument("--max-inputs", type=int, default=MAX_INPUTS, help="texts per embeddings request")
    p.add_argument("--request-concurrency", type=int, default=4, help="Triton requests in flight per HTTP request")
    p.add_argument("--concurrency", type=int, default=256, help="Triton requests in flight per model")
    p.add_argument("--timeout-s", type=float, default=300.0, help="one HTTP request, end to end")
    p.add_argument("--otlp-endpoint", help="export traces over OTLP/HTTP to this collector, e.g. "
                   "http://127.0.0.1:4318 (default: the OTEL_EXPORTER_OTLP_* variables; none: no export)")  # fmt: skip
    return p


def settings_from(args: argparse.Namespace) -> FrontSettings:
    return FrontSettings(
        triton_urls=tuple(args.triton or ["127.0.0.1:8001"]), host=args.host, port=args.port,
        api_key=os.environ.get("NESTRANK_API_KEY") or None, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_client_ca=args.tls_ca, triton_ca=args.triton_ca, repository=args.repository, models=tuple(args.model),
        embed_model=args.embed_model, rerank_model=args.rerank_model, max_body_bytes=args.max_body_bytes,
        max_inputs=args.max_inputs, request_concurrency=args.request_concurrency, concurrency=args.concurrency,
        timeout_s=args.timeout_s, otlp_endpoint=args.otlp_endpoint,
    )  # fmt: skip


def uvicorn_config(settings: FrontSettings):
    import uvicorn

    from nestrank.api.app import create_app

    tls = {}
    if settings.tls_cert:
        tls = dict(ssl_certfile=str(settings.tls_cert), ssl_keyfile=str(settings.tls_key))
        if settings.tls_client_ca:
            tls.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    options = dict(host=settings.host, port=settings.port, log_level="warning", access_log=False,
                   timeout_graceful_shutdown=10, **tls)  # fmt: skip
    return uvicorn.Config(create_app(settings), **{**options, **settings.extra})


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_from(args)
    except ValueError as err:
        print(f"nestrank api: {err}", file=sys.stderr)
        return 2
    import uvicorn

    server = uvicorn.Server(uvicorn_config(settings))
    server.run()
    return 0 if server.started else 1


class FrontThread:
    """The front in this process, on its own thread and event loop (tests, benchmarks): `with FrontThread(s):`."""

    def __init__(self, settings: FrontSettings):
        import uvicorn

        if settings.port == 0:  # uvicorn cannot report the port it bound: take a free one now
            with socket.socket() as s:
                s.bind((settings.host, 0))
                settings = FrontSettings(**{**settings.__dict__, "port": s.getsockname()[1]})
        self.settings = settings
        self.server = uvicorn.Server(uvicorn_config(settings))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), name="nestrank-api",
                                       daemon=True)  # fmt: skip

    @property
    def url(self) -> str:
        return self.settings.url

    def start(self, timeout_s: float = 30.0) -> FrontThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP front did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def __enter__(self) -> FrontThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
