"""Served embeddings over gRPC vs in-process ONNX Runtime: same graph, same texts, same request batches."""

from __future__ import annotations

import asyncio
import json
import platform
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from nestrank.bench.loadgen import closed_loop, sequential
from nestrank.clients.embed import AsyncEmbedClient
from nestrank.texts import realistic_texts


@dataclass(frozen=True)
class EmbedBenchConfig:
    model: str = "all-minilm-l6-v2"
    repository: Path = Path("model_repository")
    url: str | None = None  # None: start a server of our own on free ports
    concurrency: tuple[int, ...] = (1, 4, 16)
    requests: int = 120
    batch_size: int = 32
    warmup: int = 8
    seed: int = 0
    in_process: bool = True
    out: Path = Path("bench/out/embed.json")

    def __post_init__(self):
        if self.requests < 1 or self.batch_size < 1 or not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("requests, batch_size and every concurrency must be >= 1")


def request_batches(config: EmbedBenchConfig) -> list[list[str]]:
    texts = realistic_texts(config.requests * config.batch_size, seed=config.seed)
    return [texts[i : i + config.batch_size] for i in range(0, len(texts), config.batch_size)]


def in_process_run(config: EmbedBenchConfig, batches: list[list[str]]) -> dict:
    from nestrank.export.triton_config import read_config, string_parameters
    from nestrank.serving.embed_config import EmbedderConfig
    from nestrank.serving.embedder import Embedder

    model_dir = config.repository / config.model
    embedder = Embedder.load(model_dir / "1", EmbedderConfig.from_parameters(string_parameters(read_config(model_dir))))
    for batch in batches[: config.warmup]:
        embedder.embed(batch)
    result = sequential(lambda i: len(embedder.embed(batches[i])), len(batches), progress="in-process ORT")
    return result.summary()


async def served_run(url: str, config: EmbedBenchConfig, batches: list[list[str]], concurrency: int) -> dict:
    async with AsyncEmbedClient(url, config.model) as client:
        await client.info()
        for batch in batches[: config.warmup]:
            await client.embed(batch)

        async def send(i: int) -> int:
            return len(await client.embed(batches[i], batch_size=config.batch_size))

        result = await closed_loop(send, len(batches), concurrency, progress=f"gRPC c={concurrency}")
    return result.summary()


def run(config: EmbedBenchConfig, log=print) -> dict:
    from nestrank.serving.cli import ensure_default_models
    from nestrank.serving.launcher import ServerConfig, TritonServer, free_ports

    batches = request_batches(config)
    rows = []
    with ExitStack() as stack:
        url = config.url
        if url is None:
            ensure_default_models(config.repository)
            grpc_port, http_port, metrics_port = free_ports(3)
            server_config = ServerConfig(
                config.repository, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port
            )
            url = stack.enter_context(TritonServer(server_config)).config.grpc_url
        if config.in_process:
            rows.append({"mode": "in-process ORT", "concurrency": 1, **in_process_run(config, batches)})
        for concurrency in config.concurrency:
            summary = asyncio.run(served_run(url, config, batches, concurrency))
            rows.append({"mode": "nestrank gRPC", "concurrency": concurrency, **summary})
    report = {
        "workload": {
            "model": config.model,
            "requests": config.requests,
            "texts_per_request": config.batch_size,
            "texts": "realistic mix (median ~32 tokens, p90 ~250), nestrank.texts.realistic_texts",
        },
        "machine": {"cpus": _cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rows": rows,
    }
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    log(format_table(rows))
    log(f"wrote {config.out}")
    return report


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def format_table(rows: list[dict]) -> str:
    baseline = next((r["items_per_s"] for r in rows if r["mode"] == "in-process ORT"), None)
    header = f"{'mode':<16}{'conc':>5}{'req/s':>9}{'texts/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs ORT':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        ratio = f"{r['items_per_s'] / baseline:.2f}x" if baseline else "-"
        lines.append(
            f"{r['mode']:<16}{r['concurrency']:>5}{r['requests_per_s']:>9.1f}{r['items_per_s']:>10.1f}"
            f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{sum(r['errors'].values()):>8}{ratio:>8}"
        )
    return "\n".join(lines)
