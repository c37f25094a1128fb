"""`nestrank bench`: load tests (embed, rerank), FBNL rerank paths (fbnl), the reranker under production traffic
(traffic), the passage store (store), a soak (soak), the peer comparison (compare), the GPU paths (gpu) and
retrieval quality per depth and dims (quality)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _load_arguments(p: argparse.ArgumentParser, model: str, batch: int) -> None:
    p.add_argument("--url", action="append", help="gRPC endpoint, repeatable (default: start a server of our own)")
    p.add_argument("--model", default=model)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    loop = p.add_mutually_exclusive_group()
    loop.add_argument("--concurrency", type=_ints, default=(1, 4, 16), help="closed loop sweep, e.g. 1,4,16,64")
    loop.add_argument("--rate", type=_floats, default=(), help="open loop: requests/s per level, e.g. 2,4,8")
    p.add_argument("--requests", type=int, default=120, help="requests per level")
    p.add_argument("--duration", type=float, help="seconds per level instead of a request count")
    p.add_argument("--warmup", type=int, default=8, help="requests before measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input", type=Path, help="texts: one per line, or .jsonl with a 'text' field")
    p.add_argument("--texts", choices=("mix", "long"), default="mix",
                   help="without --input: the realistic mix, or long texts (400 words: past 256 tokens)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--max-error-rate", type=float, default=0.0, help="exit 1 above this fraction of failed requests")
    p.add_argument("--retries", type=int, default=0, help="client retries per request (default 0: failures show)")
    p.add_argument("--no-in-process", dest="in_process", action="store_false")
    p.add_argument("--out-dir", type=Path, default=Path("bench/out"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestrank bench", description="Load tests and benchmarks.")
    workloads = p.add_subparsers(dest="workload", required=True)
    e = workloads.add_parser("embed", help="load-test embeddings (texts per request: --batch-size)")
    _load_arguments(e, "all-minilm-l6-v2", 32)
    e.add_argument("--dimensions", type=int)
    e.add_argument("--precision", default="float32")
    e.add_argument("--layers", type=_ints, default=(),
                   help="depths to measure in the same run, e.g. 3,6 (a model exported with --layers)")  # fmt: skip
    e.add_argument("--compare-models", type=lambda t: tuple(m for m in t.split(",") if m), default=(),
                   help="more models of the repository measured in the same run against --model, e.g. an "
                   "unfused export")  # fmt: skip
    e.add_argument("--rounds", type=int, default=1, help="measure every level of every variant N times, "
                   "alternately, and keep each one's best (a machine shared with other work)")  # fmt: skip
    qu = workloads.add_parser("quality", help="nDCG@10 per (layers, dims) on the stdlib docstring retrieval set")
    qu.add_argument("--model-dir", type=Path, help="an exported embedder (default: export all-MiniLM-L6-v2 with "
                    "--layers all to a temporary repository)")  # fmt: skip
    qu.add_argument("--limit", type=int, help="the first N pairs only")
    qu.add_argument("--out", type=Path, default=Path("bench/out/quality.json"))
    qu.add_argument("--results", type=Path, help="also rewrite this RESULTS.md's quality section")
    r = workloads.add_parser("rerank", help="load-test reranking (candidates per request: --batch-size)")
    _load_arguments(r, "kalm-reranker", 100)
    r.add_argument("--passages", choices=("cached", "states", "fresh"), default="cached",
                   help="cached: server cache by id; states: client-held; fresh: encoded per request")  # fmt: skip
    r.add_argument("--query", default="how do I read a file line by line")
    f = workloads.add_parser("fbnl", help="100 passages for one query: cached vs encoded per request vs official")
    f.add_argument("--shape", choices=("nano", "small", "large"), default="nano",
                   help="KaLM-Reranker-V1 widths and vocabulary (random weights)")  # fmt: skip
    f.add_argument("--layers", type=int, help="layers on each side (default: the shape's full depth)")
    f.add_argument("--passages", type=int, default=100)
    f.add_argument("--passage-tokens", type=int, default=256)
    f.add_argument("--repeats", type=int, default=3)
    f.add_argument("--ratio", type=int, default=4)
    f.add_argument("--out", type=Path, default=Path("bench/out/fbnl.json"))
    tr = workloads.add_parser("traffic", help="the reranker under production traffic: interactive reranks idle and "
                              "during a bulk index, requests per `_score` execution by reranks in flight, an "
                              "abandoned warm")  # fmt: skip
    tr.add_argument("--shape", choices=("nano", "small", "large", "tiny"), default="nano",
                    help="KaLM-Reranker-V1 widths and vocabulary (random weights), or the tests' tiny T5")  # fmt: skip
    tr.add_argument("--layers", type=int, help="layers on each side (default: the shape's full depth)")
    tr.add_argument("--passage-tokens", type=int, default=256)
    tr.add_argument("--index-passages", type=int, default=400)
    tr.add_argument("--in-flight", type=_ints, default=(1, 4, 16, 64))
    tr.add_argument("--warm-documents", type=int, default=3000)
    tr.add_argument("--abandon-after", type=float, default=5.0, help="seconds before the warm is given up")
    tr.add_argument("--out", type=Path, default=Path("bench/out/traffic.json"))
    st = workloads.add_parser("store", help="rerank by id from LMDB / Redis vs the first level; store sizes, "
                              "fetch latency, nestrank index throughput")  # fmt: skip
    st.add_argument("--shape", choices=("nano", "small", "large"), default="nano")
    st.add_argument("--layers", type=int, help="layers on each side (default: the shape's full depth)")
    st.add_argument("--passages", type=int, default=100, help="candidates per rerank")
    st.add_argument("--passage-tokens", type=int, default=256)
    st.add_argument("--repeats", type=int, default=3)
    st.add_argument("--ratio", type=int, default=4)
    st.add_argument("--store-passages", type=int, default=100_000, help="synthetic passages in the large store")
    st.add_argument("--store-tokens", type=int, default=128, help="tokens per synthetic passage")
    st.add_argument("--fetches", type=int, default=200)
    st.add_argument("--index-passages", type=int, default=400, help="new passages per `nestrank index` run")
    st.add_argument(
        "--index-concurrency",
        type=lambda t: tuple(int(c) for c in t.split(",")),
        default=(4, 16),
        help="one `nestrank index` run at each (default 4,16)",
    )
    st.add_argument("--flood-requests", type=int, default=160, help="reranks at once in the flood (0: none)")
    st.add_argument("--flood-documents", type=int, default=48, help="new documents per flooding rerank")
    st.add_argument("--out", type=Path, default=Path("bench/out/store.json"))
    s = workloads.add_parser(
        "soak", help="saturate the server for a while, embed and rerank mixed: memory, errors, p99"
    )
    s.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--rerank-share", type=float, default=0.3)
    s.add_argument("--cache-bytes", type=int, default=64 << 20, help="the server's passage-state cache bound")
    s.add_argument("--out", type=Path, default=Path("bench/out/soak.json"))
    g = workloads.add_parser("gpu", help="on a CUDA GPU: ORT CUDA vs PyTorch eager, parity, IO binding on/off")
    g.add_argument("--part", choices=("embed", "rerank"), default="embed")
    g.add_argument("--texts", type=int, default=2048, help="embed: texts of the realistic mix")
    g.add_argument("--shape", choices=("nano", "small", "large"), default="nano", help="rerank: KaLM shape")
    g.add_argument("--layers", type=int, help="rerank: layers on each side (default: the shape's full depth)")
    g.add_argument("--repeats", type=int, default=5)
    g.add_argument("--out", type=Path, help="the report (default: bench/out/gpu-<part>.json)")
    g.add_argument("--render", type=Path, help="only rewrite the RESULTS section from a saved report")
    c = workloads.add_parser("compare", help="nestrank vs in-process ORT / sentence-transformers / Infinity")
    c.add_argument("--texts", type=int, default=1024)
    c.add_argument("--concurrency", type=int, default=16)
    c.add_argument("--infinity-venv", type=Path, default=Path(".venv-infinity"))
    c.add_argument("--results", type=Path, default=Path("bench/RESULTS.md"))
    c.add_argument("--http-only", action="store_true", help="the HTTP front against gRPC and Infinity only (its "
                   "own RESULTS section)")  # fmt: skip
    c.add_argument("--rounds", type=int, default=2, help="--http-only: measured alternately, best of N")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.workload == "fbnl":
        from nestrank.bench.fbnl import RerankBenchConfig, run

        run(RerankBenchConfig(shape=args.shape, layers=args.layers, passages=args.passages,
                              passage_tokens=args.passage_tokens, repeats=args.repeats, ratio=args.ratio,
                              out=args.out))  # fmt: skip
        return 0
    if args.workload == "traffic":
        from nestrank.bench.traffic import TrafficBenchConfig, run

        run(TrafficBenchConfig(shape=args.shape, layers=args.layers, passage_tokens=args.passage_tokens,
                               index_passages=args.index_passages, in_flight=args.in_flight,
                               warm_documents=args.warm_documents, abandon_after=args.abandon_after,
                               out=args.out))  # fmt: skip
        return 0
    if args.workload == "store":
        from nestrank.bench.store import StoreBenchConfig, run

        run(StoreBenchConfig(shape=args.shape, layers=args.layers, passages=args.passages,
                             passage_tokens=args.passage_tokens, repeats=args.repeats, ratio=args.ratio,
                             store_passages=args.store_passages, store_tokens=args.store_tokens,
                             fetches=args.fetches, index_passages=args.index_passages,
                             index_concurrency=args.index_concurrency, flood_requests=args.flood_requests,
                             flood_documents=args.flood_documents, out=args.out))  # fmt: skip
        return 0
    if args.workload == "gpu":
        from nestrank.bench.gpu import GpuBenchConfig, render, run

        if args.render:
            render(args.render)
            return 0
        run(GpuBenchConfig(part=args.part, texts=args.texts, shape=args.shape, layers=args.layers,
                           repeats=args.repeats, out=args.out or Path(f"bench/out/gpu-{args.part}.json")))  # fmt: skip
        return 0
    if args.workload == "soak":
        from nestrank.bench.soak import SoakConfig, run

        config = SoakConfig(duration_s=args.duration, concurrency=args.concurrency, rerank_share=args.rerank_share,
                            cache_bytes=args.cache_bytes, out=args.out)  # fmt: skip
        report = run(config)
        return 1 if report["errors"] else 0
    if args.workload == "quality":
        from nestrank.bench.quality import QualityConfig, run

        run(QualityConfig(model_dir=args.model_dir, limit=args.limit, out=args.out, results=args.results))
        return 0
    if args.workload == "compare":
        from nestrank.bench.compare import CompareConfig, run, run_http

        config = CompareConfig(texts=args.texts, concurrency=args.concurrency, infinity_venv=args.infinity_venv,
                               results=args.results, http_only=args.http_only, rounds=args.rounds)  # fmt: skip
        return (run_http if config.http_only else run)(config)
    from nestrank.bench.load import LoadConfig, run

    config = LoadConfig(
        workload=args.workload,
        model=args.model,
        urls=tuple(args.url or ()),
        repository=args.repository,
        concurrency=args.concurrency,
        rates=args.rate,
        requests=args.requests,
        duration_s=args.duration,
        warmup=args.warmup,
        seed=args.seed,
        input=args.input,
        texts=args.texts,
        batch_size=args.batch_size,
        dimensions=getattr(args, "dimensions", None),
        precision=getattr(args, "precision", "float32"),
        passages=getattr(args, "passages", "cached"),
        query=getattr(args, "query", LoadConfig.query),
        max_error_rate=args.max_error_rate,
        retries=args.retries,
        in_process=args.in_process,
        out_dir=args.out_dir,
        layers=getattr(args, "layers", ()),
        models=getattr(args, "compare_models", ()),
        rounds=getattr(args, "rounds", 1),
    )
    return run(config)[1]
