"""`nestrank bench store`: what the passage store costs and saves, on a KaLM-Reranker-V1-shaped model (random weights,
real widths), in one run.

1. Rerank 100 candidates of 256 tokens for one query, by each way of getting the candidates: first-level hits (the
   in-process LRU), LMDB and Redis on loopback with the first level off (every passage read from the store),
   client-sent states, and documents encoded per request. Medians of `repeats`.
2. Bytes per stored passage at ratios 1, 4 and 32 against the payload (the float16 states): the value's size, and
   what LMDB and Redis spend on it.
3. A store of `store_passages` synthetic passages at the model's width: p50 / p99 to fetch `fetch_ids` random ids
   (first level off), for LMDB and Redis.
4. `nestrank index` of `index_passages` new passages at concurrency 4 and 16 (the served default: LMDB, two rerank
   instances), against in-process encoding of the same passages: passages/s, and the `_encode` scheduler's
   refusals, at once (the client waits as long as the server says, and retries) and late (after waiting: none
   should come).
5. int8 against float16 passage states in LMDB: bytes per passage, fetch time, and |Δscore| of the same reranks.
6. A flood: `flood_requests` reranks at once of `flood_documents` new documents each, from a client that does not
   retry (the embed overload figure's rerank twin): served, refused (and how fast), anything else.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nestrank.bench.fbnl import QUERY, make_passages
from nestrank.bench.prometheus_text import samples
from nestrank.bench.redis_process import RedisServer
from nestrank.bench.results import RESULTS, update_section
from nestrank.clients.indexing import main as index_main
from nestrank.clients.rerank import RerankClient
from nestrank.clients.transport import NO_RETRIES
from nestrank.export.reranker import export_reranker, load_tokenizer
from nestrank.export.tiny_checkpoints import kalm_shaped_reranker
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import passage_id
from nestrank.serving.launcher.served import Override
from nestrank.serving.launcher.server import ServerConfig, TritonServer
from nestrank.serving.pipeline.passage_cache import PassageCache
from nestrank.serving.pipeline.passage_store import LmdbStore, PassageStore, RedisStore, open_store
from nestrank.serving.pipeline.passage_tiers import Passages
from nestrank.serving.pipeline.reranker import FBNLReranker

NAME = "bench-kalm"
LMDB_ROW, INT8_ROW = "LMDB (first level off)", "LMDB, int8 states (first level off)"
FIRST_LEVEL = "first-level hits (in-process LRU)"


@dataclass(frozen=True)
class StoreBenchConfig:
    shape: str = "nano"
    layers: int | None = None  # None: the shape's full depth
    passages: int = 100  # candidates per rerank
    passage_tokens: int = 256
    repeats: int = 3
    ratio: int = 4
    store_passages: int = 100_000
    store_tokens: int = 128  # tokens per synthetic passage in the large store
    fetches: int = 200
    fetch_ids: int = 100
    index_passages: int = 400
    index_concurrency: tuple[int, ...] = (4, 16)
    flood_requests: int = 160
    flood_documents: int = 48
    out: Path = Path("bench/out/store.json")


def timed(fn, repeats: int) -> list[float]:
    seconds = []
    for run in range(repeats):
        start = time.perf_counter()
        fn(run)
        seconds.append(time.perf_counter() - start)
    return seconds


@contextmanager
def served(repository: Path, store: str, first_level_bytes: int | None = None):
    """A tritonserver on `repository` with this passage store (and first-level bound), and a client that does not
    retry (timed calls time one attempt) and waits as long as a Nano-shape request on 2 CPUs takes."""
    limits = () if first_level_bytes is None else (Override.limit(f"passage_cache_bytes={first_level_bytes}"),)
    config = ServerConfig.on_free_ports(repository, passage_store=store, overrides=limits)
    with TritonServer(config), RerankClient(config.grpc_url, NAME, retry=NO_RETRIES, timeout_s=3600) as client:
        yield client, config


def scheduler_counters(config: ServerConfig, kind: str = "rerank_encode") -> dict[str, float]:
    """The `kind` scheduler's counters (nestrank_<kind>_{admitted, shed, expired, ...}), summed over instances."""
    counters: dict[str, float] = {}
    for sample in samples(config.metrics_url):
        if sample.name.startswith(f"nestrank_{kind}_") and sample.labels.get("model") == f"{NAME}_encode":
            key = sample.name.removeprefix(f"nestrank_{kind}_")
            counters[key] = counters.get(key, 0.0) + sample.value
    return counters


def synthetic(count: int, tokens: int, ratio: int, width: int, fingerprint: str, seed: int) -> PassageStates:
    rng = np.random.default_rng(seed)
    groups = -(-tokens // ratio)
    counts = np.full(groups, ratio)
    counts[-1] = tokens - ratio * (groups - 1)
    parts = [(rng.standard_normal((groups, width), dtype=np.float32), counts) for _ in range(count)]
    return PassageStates.from_passages(parts, ratio, fingerprint=fingerprint)


def bytes_per_passage(store: PassageStore, width: int, tokens: int, ratios=(1, 4, 32), count: int = 500) -> dict:
    """Per ratio: the float16 payload of one `tokens`-token passage, its value, and what the store spends on it."""
    rows = {}
    for ratio in ratios:
        passages = synthetic(count, tokens, ratio, width, "0" * 32, seed=ratio)
        values = {f"bytes-probe:{ratio}:{i}".encode(): passages.subset([i]).to_bytes() for i in range(count)}
        if isinstance(store, LmdbStore):
            before = store.used_bytes()
            store.put_many(values, pinned=True)
            spent = (store.used_bytes() - before) / count
        else:
            store.put_many(values, pinned=True)
            spent = statistics.mean(store.client.memory_usage(k, samples=0) for k in list(values)[:50])
        rows[ratio] = {"groups": -(-tokens // ratio), "payload": passages.states.nbytes / count,
                       "value": statistics.mean(len(v) for v in values.values()), "stored": spent}  # fmt: skip
    return rows


def fetch_latency(store: PassageStore, config: StoreBenchConfig, width: int, log) -> dict:
    """Fills `store` with synthetic passages through the store API, then times batched fetches of random ids."""
    fingerprint = "5" * 32
    writer = Passages(fingerprint, (config.ratio,), PassageCache(0), store)
    ids = [passage_id(f"synthetic {i}") for i in range(config.store_passages)]
    batch = 1000
    with tqdm(total=len(ids), unit="passage", desc=f"fill {store.url.split(':')[0]}", disable=log is None) as bar:
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            writer.put(chunk, synthetic(len(chunk), config.store_tokens, config.ratio, width, fingerprint, start),
                       pinned=True)  # fmt: skip
            bar.update(len(chunk))
    reader = Passages(fingerprint, (config.ratio,), PassageCache(0), store)  # every read from the store
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(config.fetches):
        chosen = [ids[i] for i in rng.choice(len(ids), config.fetch_ids, replace=False)]
        start = time.perf_counter()
        found = reader.get(chosen, config.ratio, strict=True)
        seconds.append(time.perf_counter() - start)
        assert len(found) == len(chosen)
    value_bytes = len(synthetic(1, config.store_tokens, config.ratio, width, fingerprint, 0).to_bytes())
    return {"passages": len(ids), "value_bytes": value_bytes, "p50_ms": 1e3 * float(np.percentile(seconds, 50)),
            "p99_ms": 1e3 * float(np.percentile(seconds, 99)),
            "mb_per_s": config.fetch_ids * value_bytes / float(np.median(seconds)) / 1e6}  # fmt: skip


def run(config: StoreBenchConfig, log=print) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = kalm_shaped_reranker(tmp / "ckpt", config.shape, layers=config.layers)
        export = export_reranker(checkpoint, NAME, tmp / "repo", ratios=(config.ratio,), log=log)
        width = export.config.hidden_size
        tokenizer = load_tokenizer(checkpoint)
        docs = make_passages(tokenizer, config.passages, config.passage_tokens)
        ids = [f"doc-{i}" for i in range(len(docs))]
        rows: dict[str, list[float]] = {}
        scores: dict[str, np.ndarray] = {}

        def by_id(client, key):
            def call(_run):
                ranked = client.rerank(QUERY, passages=ids, compression_ratio=config.ratio)
                scores[key] = np.array([r.score for r in sorted(ranked, key=lambda r: r.index)])

            return call

        redis = RedisServer(tmp / "redis", persistent=False).start()
        stored_bytes: dict[str, float] = {}
        indexing = flooded = None
        try:
            for label, store, first_level in ((LMDB_ROW, f"lmdb://{tmp / 'lmdb'}", 0),
                                              (INT8_ROW, f"lmdb://{tmp / 'lmdb-int8'}?states=int8", 0),
                                              ("Redis on loopback (first level off)", redis.url, 0),
                                              (FIRST_LEVEL, "memory://", None)):  # fmt: skip
                log(f"rerank: {label}")
                with served(tmp / "repo", store, first_level) as (client, server):
                    indexed = client.index(docs, ids, compression_ratio=config.ratio)
                    stored_bytes[label] = float(indexed.stored_bytes.mean())
                    by_id(client, label)(0)  # the first level (where on) holds them from here
                    rows[label] = timed(by_id(client, label), config.repeats)
                    if label == LMDB_ROW:  # `nestrank index` and a flood as served by default: LMDB, 2 instances
                        indexing = index_throughput(tmp, server, export, tokenizer, config, log)
                        flooded = flood(server, tokenizer, config, log) if config.flood_requests else None
                    if first_level is None:  # the same server for the paths that need no store
                        # set-up, not timed: the client's default retries wait out `_encode`'s "retry after"
                        with RerankClient(server.grpc_url, NAME, timeout_s=3600) as setup:
                            states = setup.encode_passages(docs, compression_ratio=config.ratio)
                        rows["client-sent states"] = timed(
                            lambda _: client.rerank(QUERY, passages=states), config.repeats
                        )
                        rows["documents encoded per request"] = timed(
                            lambda run: client.rerank(QUERY, [f"run {run} {d}" for d in docs],
                                                      compression_ratio=config.ratio), config.repeats,
                        )  # fmt: skip
            log("bytes per passage")
            sizes = {"lmdb": bytes_per_passage(open_store(f"lmdb://{tmp / 'sizes'}?map_size=4GiB"), width,
                                               config.passage_tokens),
                     "redis": bytes_per_passage(RedisStore(redis.url), width, config.passage_tokens)}  # fmt: skip
            log(f"a store of {config.store_passages} passages")
            value = len(synthetic(1, config.store_tokens, config.ratio, width, "0" * 32, 0).to_bytes())
            size = int(1.3 * config.store_passages * value) + (1 << 30)  # LMDB pages around each value, and room
            stores = {"lmdb": open_store(f"lmdb://{tmp / 'big'}?map_size={size}"),
                      "lmdb, int8 states": open_store(f"lmdb://{tmp / 'big8'}?map_size={size}&states=int8"),
                      "redis": RedisStore(redis.url, timeout_s=10)}  # fmt: skip
            latency = {name: fetch_latency(store, config, width, log) for name, store in stores.items()}
        finally:
            redis.stop()
    first = statistics.median(rows[FIRST_LEVEL])
    report = {
        "config": {k: str(v) for k, v in asdict(config).items()},
        "model": {"shape": config.shape, "hidden": width, "layers": config.layers or "full"},
        "rerank_s": {
            k: {"median_s": statistics.median(v), "vs_first_level": statistics.median(v) / first, "runs": v}
            for k, v in rows.items()
        },  # fmt: skip
        "same_scores_across_stores": float(
            max(np.abs(s - scores[FIRST_LEVEL]).max() for k, s in scores.items() if k != INT8_ROW)
        ),  # fmt: skip
        "int8": {
            "max_abs_score_diff_vs_float16": float(np.abs(scores[INT8_ROW] - scores[LMDB_ROW]).max()),
            "stored_bytes": stored_bytes[INT8_ROW],
            "float16_stored_bytes": stored_bytes[LMDB_ROW],
        },
        "bytes_per_passage": sizes,
        "fetch": latency,
        "index": indexing,
        "flood": flooded,
    }
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    plot(report, RESULTS.parent / "store.png")  # beside RESULTS.md, which shows it
    update_section("store", results_markdown(report, config))
    log(results_markdown(report, config))
    return report


def index_throughput(tmp: Path, server: ServerConfig, export, tokenizer, config: StoreBenchConfig, log) -> dict:
    """Passages/s through `nestrank index` (the served model, over gRPC, into the store) at each concurrency, new
    passages each time, against the same passages encoded in-process by the same graphs; with the `_encode`
    scheduler's refusals at once (`shed`: the client waits as the server says, then retries) and late (`expired`)."""
    runs = {}
    for concurrency in config.index_concurrency:
        documents = make_passages(tokenizer, config.index_passages, config.passage_tokens, f"index c{concurrency} ")
        corpus = tmp / f"index-{concurrency}.jsonl"
        corpus.write_text("".join(json.dumps({"id": f"c{concurrency}-{i}", "text": d}) + "\n"
                                  for i, d in enumerate(documents)))  # fmt: skip
        log(f"nestrank index: {len(documents)} passages at concurrency {concurrency}")
        before = scheduler_counters(server)
        start = time.perf_counter()
        code = index_main([str(corpus), "--url", server.grpc_url, "--model", NAME, "--compression-ratio",
                           str(config.ratio), "--concurrency", str(concurrency), "--timeout-s", "3600",
                           "--quiet"])  # fmt: skip
        seconds = time.perf_counter() - start
        after = scheduler_counters(server)
        if code != 0:
            raise RuntimeError(f"nestrank index exited with {code} at concurrency {concurrency}")
        runs[concurrency] = {"passages_per_s": len(documents) / seconds, "seconds": seconds,
                             **{key: after.get(key, 0) - before.get(key, 0)
                                for key in ("admitted", "shed", "expired", "batches")}}  # fmt: skip
    reranker = FBNLReranker.from_repository(tmp / "repo", NAME, export.config)
    reranker.encoder.encode(documents[:8], config.ratio)  # sessions warm
    start = time.perf_counter()
    reranker.encoder.encode(documents, config.ratio)
    in_process = len(documents) / (time.perf_counter() - start)
    del reranker
    return {"passages": config.index_passages, "in_process_per_s": in_process, "runs": runs}


def flood(server: ServerConfig, tokenizer, config: StoreBenchConfig, log) -> dict:
    """`flood_requests` reranks at once of new documents, no retries: how many are served, how fast the rest are
    refused, and whether anything else comes back (it should not: no INTERNAL, no timeout)."""
    import asyncio

    from nestrank.clients.rerank import AsyncRerankClient
    from nestrank.protocol.errors import OverloadedError

    words = make_passages(tokenizer, config.flood_documents, config.passage_tokens, "flood ")
    log(f"flood: {config.flood_requests} reranks at once of {config.flood_documents} new documents")

    async def run():
        async with AsyncRerankClient(server.grpc_url, NAME, retry=NO_RETRIES, timeout_s=3600,
                                     concurrency=config.flood_requests) as client:  # fmt: skip

            async def one(request: int):
                start = time.perf_counter()
                try:
                    await client.rerank(QUERY, [f"request {request} {d}" for d in words],
                                        compression_ratio=config.ratio)  # fmt: skip
                    return "served", time.perf_counter() - start
                except OverloadedError:
                    return "refused", time.perf_counter() - start
                except Exception as err:  # noqa: BLE001 - counted and shown: the figure says whether any came
                    return type(err).__name__, time.perf_counter() - start

            return await asyncio.gather(*(one(i) for i in range(config.flood_requests)))

    start = time.perf_counter()
    outcomes = asyncio.run(run())
    refused = [s for kind, s in outcomes if kind == "refused"]
    served_s = [s for kind, s in outcomes if kind == "served"]
    others = sorted({kind for kind, _ in outcomes} - {"served", "refused"})
    return {"requests": config.flood_requests, "documents_each": config.flood_documents,
            "served": len(served_s), "refused": len(refused), "others": others,
            "refusal_p50_s": float(np.median(refused)) if refused else None,
            "refusal_max_s": max(refused, default=None), "served_max_s": max(served_s, default=None),
            "seconds": time.perf_counter() - start}  # fmt: skip


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["rerank_s"])
    medians = [report["rerank_s"][n]["median_s"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.barh(names, medians, color=["#4c72b0"] * (len(names) - 1) + ["#c44e52"])
    for y, value in enumerate(medians):
        ax.text(value, y, f" {value:.1f} s", va="center")
    ax.set_xlabel("seconds to rerank 100 candidates (median)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_markdown(report: dict, config: StoreBenchConfig) -> str:
    rerank, fetch, index = report["rerank_s"], report["fetch"], report["index"]
    lines = [
        f"## Passage store: rerank by id from LMDB and Redis, {config.passages} candidates",
        "",
        f"Regenerated by `{command(config)}` (random weights at the real widths, width "
        f"{report['model']['hidden']}); {config.passages} passages of {config.passage_tokens} tokens, ratio "
        f"{config.ratio}, medians of {config.repeats}; each timed call is one attempt (no retries).",
        "",
        "| candidates from | median s | vs first level |",
        "| --- | --- | --- |",
        *(f"| {name} | {row['median_s']:.2f} | {row['vs_first_level']:.3f}x |" for name, row in rerank.items()),
        "",
        f"- scores through every float16 store equal (max |Δscore| {report['same_scores_across_stores']:.1e}); "
        f"int8 states against float16: max |Δscore| {report['int8']['max_abs_score_diff_vs_float16']:.1e}, "
        f"{report['int8']['stored_bytes']:,.0f} bytes a passage against {report['int8']['float16_stored_bytes']:,.0f} "
        f"({report['int8']['stored_bytes'] / report['int8']['float16_stored_bytes']:.2f}x).",
        "",
        f"`nestrank index` of {index['passages']} new passages of {config.passage_tokens} tokens (LMDB, two rerank "
        f"instances, as served by default), against {index['in_process_per_s']:.2f} passages/s encoding in-process; "
        'refused at once: the `_encode` scheduler\'s answer "retry after N s", which the client waits out; late: '
        "refused after waiting:",
        "",
        "| concurrency | passages/s | vs in-process | `_encode` requests | refused at once | refused late |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {c} | {r['passages_per_s']:.2f} | {r['passages_per_s'] / index['in_process_per_s']:.2f}x | "
            f"{r['admitted']:.0f} | {r['shed']:.0f} | {r['expired']:.0f} |"
            for c, r in index["runs"].items()
        ),  # fmt: skip
        "",
        *(flood_lines(report["flood"]) if report["flood"] else []),
        "",
        f"Bytes per {config.passage_tokens}-token passage (payload: the float16 states):",
        "",
        "| ratio | groups | payload | value | in LMDB | in Redis |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for ratio, row in report["bytes_per_passage"]["lmdb"].items():
        redis_row = report["bytes_per_passage"]["redis"][ratio]
        lines.append(f"| {ratio} | {row['groups']} | {row['payload']:,.0f} | {row['value']:,.0f} | "
                     f"{row['stored']:,.0f} | {redis_row['stored']:,.0f} |")  # fmt: skip
    lines += [
        "",
        f"Fetching {config.fetch_ids} random ids from a store of {fetch['lmdb']['passages']:,} passages "
        f"({config.store_tokens} tokens each, {fetch['lmdb']['value_bytes']:,} bytes a value), first level off, "
        f"{config.fetches} fetches:",
        "",
        "| store | p50 ms | p99 ms | MB/s at p50 |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['mb_per_s']:,.0f} |"
            for name, row in fetch.items()
        ),  # fmt: skip
        "",
        "![rerank time by where the candidates come from](store.png)",
    ]
    return "\n".join(lines)


def flood_lines(flood: dict) -> list[str]:
    refusals = (f"refused in p50 {flood['refusal_p50_s'] * 1e3:.0f} ms, max {flood['refusal_max_s'] * 1e3:.0f} ms"
                if flood["refused"] else "none refused")  # fmt: skip
    served = f"the slowest served in {flood['served_max_s']:.1f} s" if flood["served"] else "none served"
    return [f"A flood of {flood['requests']} reranks at once of {flood['documents_each']} new documents each, no "
            f"retries: **{flood['served']} served, {flood['refused']} refused** ({refusals}; {served}); anything "
            f"else: {', '.join(flood['others']) or 'nothing'}; {flood['seconds']:.0f} s in all."]  # fmt: skip


def command(config: StoreBenchConfig) -> str:
    """The command line that makes this report: the shape, and every option that differs from its default."""
    defaults, flags = StoreBenchConfig(), [f"--shape {config.shape}"]
    for name in ("repeats", "store_passages", "index_passages", "flood_requests"):
        if getattr(config, name) != getattr(defaults, name):
            flags.append(f"--{name.replace('_', '-')} {getattr(config, name)}")
    return "nestrank bench store " + " ".join(flags)
