"""`nestrank serve`, the main job: prepares the repository (exports the default models, and a reranker if asked,
when missing), then serves it. The one place that joins `export` and `serving`."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from nestrank.serving.launcher import cli as serving_cli


def parser():
    p = serving_cli.parser()
    p.add_argument("--reranker", default=os.environ.get("NESTRANK_RERANKER"),
                   help="also serve this FBNL reranker (checkpoint directory or Hugging Face model id, e.g. "
                   "KaLM-Embedding/KaLM-Reranker-V1-Nano), exported into the repository first if missing")  # fmt: skip
    p.add_argument("--reranker-name", help="its Triton model name (default: from the checkpoint's name)")
    p.add_argument("--passage-store", default=os.environ.get("NESTRANK_PASSAGE_STORE") or default_passage_store(),
                   help="where rerankers keep pooled passage states: lmdb:///path[?map_size=16GiB] (one host, "
                   "persistent), redis://host:port/db (shared by replicas), or memory:// (this process only); "
                   "written into the served copy of every reranker's config (passage_store; a password stays out "
                   "of it); default %(default)s; env NESTRANK_PASSAGE_STORE")  # fmt: skip
    p.add_argument("--passage-states", choices=("float16", "int8"), default=os.environ.get("NESTRANK_PASSAGE_STATES"),
                   help="how rerankers hold passage states in the store and the first level: float16 (the default) "
                   "or int8 (half the bytes, one scale per group; scores move by at most the export's int8 gate); "
                   "the same as the store URL's ?states= option, which it sets; `nestrank index` writes what the "
                   "server holds; env NESTRANK_PASSAGE_STATES")  # fmt: skip
    p.add_argument("--api-port", type=int, default=int(os.environ.get("NESTRANK_API_PORT", 8080)),
                   help="the HTTP front (OpenAI, Cohere/Jina, TEI routes; default %(default)s)")  # fmt: skip
    p.add_argument("--api-host", default=os.environ.get("NESTRANK_API_HOST"), help="its address (default: --host)")
    p.add_argument("--no-api", action="store_true", default=os.environ.get("NESTRANK_NO_API") == "1",
                   help="no HTTP front (then Triton's HTTP binds --host as before)")  # fmt: skip
    p.add_argument(
        "--no-default-models",
        action="store_true",
        help="serve the repository as it is (default: export all-MiniLM-L6-v2 fp32 + int8 into it if missing)",
    )
    return p


def default_passage_store() -> str:
    """The one default (the rerank model's, when its config names no store): LMDB in the user's cache directory."""
    from nestrank.serving.pipeline.passage_store import default_passage_store as default

    return default()


def passage_store_url(args) -> str:
    """--passage-store with --passage-states applied (a ValueError when the two disagree)."""
    from nestrank.serving.pipeline.passage_store import with_states

    return with_states(args.passage_store, args.passage_states) if args.passage_states else args.passage_store


def check_passage_store(url: str) -> None:
    """Refuse a malformed store URL at start-up; an unreachable store only warns (documents still rerank)."""
    from nestrank.serving.pipeline.passage_store import StoreError, open_store

    try:
        store = open_store(url)
    except ValueError as err:
        raise SystemExit(f"nestrank serve: --passage-store: {err}")
    try:
        store.get_many([b"nestrank:ping"])
    except StoreError as err:
        print(f"nestrank serve: WARNING: {err}; reranking by id fails until it answers", file=sys.stderr)
    finally:
        store.close()


def prepare(repository: Path, reranker: str | None, reranker_name: str | None, default_models: bool) -> None:
    try:
        from nestrank.export import repository as exported
    except ImportError as err:
        raise SystemExit(f"nestrank serve: cannot export models ({err}); install nestrank[export]")
    if reranker:  # first: a model id may need the network, which the default models' export turns off
        try:
            exported.ensure_reranker(repository, reranker, reranker_name or exported.reranker_name(reranker))
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            raise SystemExit(f"nestrank serve: cannot export {reranker}: {err}")
    if default_models:
        exported.ensure_default_models(repository)
    if repository.is_dir():
        exported.warn_about_other_versions(repository)


def refused(args) -> str | None:
    if reason := serving_cli.refused(args):
        return reason
    if not args.no_api:
        if args.tls_ca:
            return ("mutual TLS (--tls-ca) and the HTTP front: the front has no client certificate for Triton's gRPC; "
                    "pass --no-api")  # fmt: skip
        if args.api_port in (args.grpc_port, args.http_port, args.metrics_port) or not 0 < args.api_port < 65536:
            return f"--api-port {args.api_port}: must be a free port other than gRPC's, HTTP's and metrics'"
    return None


def front_settings(args) -> None:
    """With the front on, Triton's own HTTP (health, KServe JSON) binds loopback unless --http-host says otherwise;
    metrics stay where they were, for Prometheus."""
    if not args.no_api and args.http_host is None:
        args.metrics_host = args.metrics_host or args.host
        args.http_host = "127.0.0.1"


def front(args):
    """The companion that runs the HTTP front against this launcher's Triton (serving knows it as a command)."""
    from nestrank.serving.launcher.companion import Companion

    def make(config, events) -> Companion:
        host = args.api_host or args.host
        grpc_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.host, config.host)
        grpc_host = f"[{grpc_host}]" if ":" in grpc_host else grpc_host
        command = [sys.executable, "-m", "nestrank.api", "--triton", f"{grpc_host}:{config.grpc_port}",
                   "--host", host, "--port", str(args.api_port),
                   "--repository", str(config.model_repository)]  # fmt: skip
        if args.otlp_endpoint:
            command += ["--otlp-endpoint", args.otlp_endpoint]
        if args.tls_cert:  # the same certificate for HTTPS, and trusted on the gRPC hop to Triton
            command += ["--tls-cert", str(args.tls_cert), "--tls-key", str(args.tls_key), "--triton-ca",
                        str(args.tls_cert)]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "NESTRANK_API_KEY"}
        if args.api_key:
            env["NESTRANK_API_KEY"] = args.api_key  # in the environment: command lines are public on this host
        scheme = "https" if args.tls_cert else "http"
        shown = f"[{host}]" if ":" in host else host
        return Companion("HTTP front", command, (host, args.api_port), env, events,
                         url=f"{scheme}://{shown}:{args.api_port}")  # fmt: skip

    return make


def main(argv: list[str], environment: Mapping[str, str] | None = None) -> int:
    """`environment`: extra variables for tritonserver and its models' processes, from Python (no flag), e.g.
    `main(["--repository", "repo"], environment={"HF_HOME": "/var/lib/hf"})`. Limits and the store are flags
    (`--limit`, `--passage-store`), written into the served copy of the models' configs."""
    args = parser().parse_args(argv)
    if reason := refused(args):
        print(f"nestrank serve: {reason}", file=sys.stderr)
        return 2
    try:
        args.passage_store = passage_store_url(args)
    except ValueError as err:
        print(f"nestrank serve: {err}", file=sys.stderr)
        return 2
    check_passage_store(args.passage_store)
    prepare(Path(args.repository), args.reranker, args.reranker_name, not args.no_default_models)
    front_settings(args)
    return serving_cli.run(args, environment, None if args.no_api else front(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
