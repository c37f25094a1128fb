"""The server half of `nestrank serve`: starts Triton on a model repository on 127.0.0.1 (gRPC 8001, HTTP 8000,
metrics 8002), supervises it and stays up until SIGINT/SIGTERM.

Closed by default: Triton's admin APIs need the admin key; `--api-key` closes inference too; `--tls-*` for gRPC.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from nestrank.protocol.limits import LIMIT_NAMES
from nestrank.serving.launcher.companion import Companion
from nestrank.serving.launcher.served import Override, changed_configs
from nestrank.serving.launcher.server import ServerConfig, ServerStartError, TlsConfig, TritonServer
from nestrank.serving.launcher.supervisor import EventLog


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"NESTRANK_{name}", default))


def limit(text: str) -> Override:
    try:
        return Override.limit(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestrank serve", description="Serve a model repository with Triton.")
    p.add_argument("--repository", default=os.environ.get("NESTRANK_REPOSITORY", "model_repository"))
    p.add_argument("--host", default=os.environ.get("NESTRANK_HOST", "127.0.0.1"))
    p.add_argument("--grpc-port", type=int, default=_env_int("GRPC_PORT", 8001))
    p.add_argument("--http-port", type=int, default=_env_int("HTTP_PORT", 8000))
    p.add_argument("--metrics-port", type=int, default=_env_int("METRICS_PORT", 8002))
    p.add_argument("--tritonserver", type=Path, help="a system tritonserver binary (default: the pytriton wheel's)")
    p.add_argument("--response-cache-bytes", type=int, default=_env_int("RESPONSE_CACHE_BYTES", 0))
    p.add_argument("--http-host", default=os.environ.get("NESTRANK_HTTP_HOST"),
                   help="address for Triton's HTTP (default: --host); HTTP has no TLS")  # fmt: skip
    p.add_argument("--metrics-host", default=os.environ.get("NESTRANK_METRICS_HOST"),
                   help="address for Prometheus metrics (default: --http-host)")  # fmt: skip
    p.add_argument("--api-key", default=os.environ.get("NESTRANK_API_KEY"),
                   help="require this key (header nestrank-api-key) for inference, model config, metadata and "
                   "statistics; env NESTRANK_API_KEY")  # fmt: skip
    p.add_argument("--admin-key", default=os.environ.get("NESTRANK_ADMIN_KEY"),
                   help="key (header nestrank-admin-key) that opens Triton's admin APIs, the ones that change the "
                   "server: shared memory, model repository, trace, logging (default: a random key, so they stay "
                   "closed); env NESTRANK_ADMIN_KEY")  # fmt: skip
    # Removed: a client that registers shared memory can crash the server (it may name the backend's own regions).
    p.add_argument("--allow-shared-memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tls-cert", type=Path, help="gRPC TLS: the server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="gRPC TLS: the server key (PEM)")
    p.add_argument("--tls-ca", type=Path, help="gRPC mutual TLS: accept client certificates signed by this CA (PEM)")
    p.add_argument("--limit", action="append", default=[], type=limit, metavar="[MODEL:]NAME=VALUE",
                   help="set a limit of the served models (every model that has it, or MODEL and its sub-models), "
                   "written into the served copy of their config: " + ", ".join(LIMIT_NAMES) + "; sizes take "
                   "KiB/MiB/GiB (docs/limits.md). Repeatable, e.g. --limit max_candidates=200 "
                   "--limit kalm-reranker-v1-nano:passage_cache_bytes=2GiB")  # fmt: skip
    p.add_argument("--otlp-endpoint", help="the HTTP front exports traces over OTLP/HTTP to this collector, e.g. "
                   "http://127.0.0.1:4318 (default: the OTEL_EXPORTER_OTLP_* variables; none: no export)")  # fmt: skip
    p.add_argument(
        "--triton-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass an argument to tritonserver as it is, e.g. --triton-arg=--log-verbose=1 (repeatable)",
    )
    return p


def main(argv: list[str], environment: Mapping[str, str] | None = None) -> int:
    """Serves the repository as it is (`nestrank serve` prepares it first: `nestrank/serve.py`). `environment`:
    extra variables for tritonserver and its models (ServerConfig.environment)."""
    return run(parser().parse_args(argv), environment)


def refused(args: argparse.Namespace) -> str | None:
    """Why these flags cannot start a server (checked before anything is exported or started)."""
    if args.allow_shared_memory:
        return ("--allow-shared-memory was removed: a client that registers shared memory can crash the server, so "
                "shared memory needs --admin-key (docs/security.md)")  # fmt: skip
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_ca and not args.tls_cert):
        return "--tls-cert and --tls-key go together (and --tls-ca needs them)"
    return None


def run(
    args: argparse.Namespace,
    environment: Mapping[str, str] | None = None,
    companion: Callable[[ServerConfig, EventLog], Companion] | None = None,
) -> int:
    """`companion(config, events)`: a process to run beside tritonserver once it is ready (the HTTP front)."""
    repository = Path(args.repository)
    if reason := refused(args):
        print(f"nestrank serve: {reason}", file=sys.stderr)
        return 2
    try:
        if repository.is_dir():  # refused before anything starts; the launcher applies them (served.py)
            changed_configs(repository, args.limit)
    except ValueError as err:
        print(f"nestrank serve: {err}", file=sys.stderr)
        return 2
    try:
        config = ServerConfig(
            model_repository=repository,
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            http_host=args.http_host,
            metrics_host=args.metrics_host,
            tritonserver=args.tritonserver,
            response_cache_bytes=args.response_cache_bytes,
            api_key=args.api_key,
            admin_key=args.admin_key,
            tls=TlsConfig(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None,
            extra_args=tuple(args.triton_arg),
            overrides=tuple(args.limit),
            passage_store=getattr(args, "passage_store", None),  # nestrank serve's flag (serve.py)
            environment=environment or {},
        )
    except ValueError as err:
        print(f"nestrank serve: {err}", file=sys.stderr)
        return 2
    if config.exposed_without_key:
        print(f"nestrank serve: WARNING: listening on {args.host} without --api-key: anyone who can reach this "
              "address can run inference. Set --api-key (and TLS), or keep it on 127.0.0.1.",
              file=sys.stderr, flush=True)  # fmt: skip
    server = TritonServer(config, echo=True)
    stopping = []

    def forward(signum, _frame):  # installed before start: a signal during start-up stops it cleanly too
        stopping.append(signum)
        server.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    try:
        server.start()
    except ServerStartError as err:
        if stopping:
            return 0
        print(f"nestrank serve: {err}", file=sys.stderr)
        return 1
    if stopping:  # the signal came before tritonserver existed
        server.stop()
        return 0
    beside = None
    if companion is not None:
        try:
            beside = companion(config, server.events).start()
        except ServerStartError as err:
            server.stop()
            print(f"nestrank serve: {err}", file=sys.stderr)
            return 1
    api = f", API {beside.url}" if beside is not None and beside.url else ""
    print(f"nestrank: serving {repository} — gRPC {config.grpc_url}, HTTP {config.http_address}{api}", flush=True)
    code = server.wait()
    if beside is not None:
        beside.stop()
    server.stop()
    return code
