"""`nestrank bench embed|rerank`: figures from one run each (see bench/README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestrank bench", description="Measure throughput and latency.")
    workloads = p.add_subparsers(dest="workload", required=True)
    e = workloads.add_parser("embed", help="embed over gRPC at each concurrency, next to in-process ORT")
    e.add_argument("--model", default="all-minilm-l6-v2")
    e.add_argument("--repository", type=Path, default=Path("model_repository"))
    e.add_argument("--url", help="a running server (default: start one on free ports)")
    e.add_argument("--concurrency", type=_ints, default=(1, 4, 16), help="e.g. 1,4,16")
    e.add_argument("--requests", type=int, default=120, help="requests per concurrency level")
    e.add_argument("--batch-size", type=int, default=32, help="texts per request")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-in-process", dest="in_process", action="store_false")
    e.add_argument("--out", type=Path, default=Path("bench/out/embed.json"))
    r = workloads.add_parser("rerank", help="100 passages for one query: cached vs encoded per request vs PyTorch")
    r.add_argument("--passages", type=int, default=100)
    r.add_argument("--repeats", type=int, default=5)
    r.add_argument("--hidden", type=int, default=256)
    r.add_argument("--layers", type=int, default=6, help="layers on each side (encoder and decoder)")
    r.add_argument("--ratio", type=int, default=4)
    r.add_argument("--out", type=Path, default=Path("bench/out/rerank.json"))
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.workload == "rerank":
        from nestrank.bench.rerank import RerankBenchConfig
        from nestrank.bench.rerank import run as run_rerank

        config = RerankBenchConfig(passages=args.passages, repeats=args.repeats, hidden=args.hidden,
                                   layers=args.layers, ratio=args.ratio, out=args.out)  # fmt: skip
        run_rerank(config)
        return 0
    from nestrank.bench.embed import EmbedBenchConfig, run

    run(
        EmbedBenchConfig(
            model=args.model,
            repository=args.repository,
            url=args.url,
            concurrency=args.concurrency,
            requests=args.requests,
            batch_size=args.batch_size,
            seed=args.seed,
            in_process=args.in_process,
            out=args.out,
        )
    )
    return 0
