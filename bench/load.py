"""`nestrank bench embed|rerank`: the load-test client.

Closed loop (`--concurrency 1,4,16,64`) or open loop (`--rate 2,4,8` requests/s), against one or
more gRPC endpoints (`--url`, repeatable) or a Triton it starts itself on free ports. Reports
throughput (requests, items and tokens per second), latency percentiles and errors by status code,
as a table, JSON, CSV and a PNG plot; exits 1 when an error rate exceeds `--max-error-rate`.
"""

from __future__ import annotations

import asyncio
import json
import platform
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from nestrank.bench.loadgen import closed_loop, open_loop, sequential, write_reports
from nestrank.texts import long_texts, realistic_texts

PASSAGE_MODES = ("cached", "states", "fresh")
IN_FLIGHT = 4096  # the load generator decides what is in flight (closed or open loop); the client must not cap it


@dataclass(frozen=True)
class LoadConfig:
    workload: str  # embed | rerank
    model: str
    urls: tuple[str, ...] = ()  # empty: start a server of our own on `repository`
    repository: Path = Path("model_repository")
    concurrency: tuple[int, ...] = (1, 4, 16)
    rates: tuple[float, ...] = ()  # open loop when given
    requests: int = 120  # per level (an upper bound when duration_s is set)
    duration_s: float | None = None  # per level: closed loop stops then; open loop sends rate x duration
    warmup: int = 8
    seed: int = 0
    input: Path | None = None  # one text per line, or JSONL with a "text" field
    texts: str = "mix"  # without --input: "mix" (the realistic mix) or "long" (400 words each, past 256 tokens)
    batch_size: int = 32  # texts per embed request, candidates per rerank request
    dimensions: int | None = None
    precision: str = "float32"
    passages: str = "cached"  # rerank: cached (server cache, by id), states (client-held), fresh (encoded per request)
    query: str = "how do I read a file line by line"
    max_error_rate: float = 0.0
    retries: int = 0  # client retries per request; 0: failures are reported, never hidden as slow successes
    in_process: bool = True  # embed: an in-process ONNX Runtime row on the same model and batches
    layers: tuple[int, ...] = ()  # embed: depths to measure, each a series (needs a model exported with --layers)
    models: tuple[str, ...] = ()  # embed: more models measured in the same run against `model` (fused vs unfused)
    rounds: int = 1  # every level of every variant measured this many times, alternately; each keeps its best
    out_dir: Path = Path("bench/out")

    def __post_init__(self):
        if self.workload not in ("embed", "rerank"):
            raise ValueError(f"workload must be embed or rerank, got {self.workload!r}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration_s must be > 0")
        if self.requests < 1 or self.batch_size < 1 or self.warmup < 0:
            raise ValueError("requests and batch_size must be >= 1, warmup >= 0")
        if not self.rates and (not self.concurrency or min(self.concurrency) < 1):
            raise ValueError("every concurrency must be >= 1")
        if any(r <= 0 for r in self.rates):
            raise ValueError("every rate must be > 0")
        if self.passages not in PASSAGE_MODES:
            raise ValueError(f"passages must be one of {PASSAGE_MODES}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError("max_error_rate must be in [0, 1]")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if (self.layers or self.models) and self.workload != "embed":
            raise ValueError("layers and models are embed options")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if any(k < 1 for k in self.layers):
            raise ValueError("every depth in layers must be >= 1")

    @property
    def retry(self):
        from nestrank.clients.transport import RetryPolicy

        return RetryPolicy(attempts=1 + self.retries)


def load_texts(config: LoadConfig, count: int) -> list[str]:
    """`count` texts from --input (cycled) or the built-in realistic mix."""
    if config.input is None:
        return (
            long_texts(count, seed=config.seed) if config.texts == "long" else realistic_texts(count, seed=config.seed)
        )
    lines = [ln for ln in config.input.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if config.input.suffix == ".jsonl":
        lines = [json.loads(ln)["text"] for ln in lines]
    if not lines:
        raise ValueError(f"{config.input} holds no texts")
    return [lines[i % len(lines)] for i in range(count)]


def token_counter(config: LoadConfig, model: str | None = None):
    """Counts tokens with the served model's own tokenizer when the repository has it, else None."""
    from nestrank.serving.pipeline.tokenization import TextTokenizer

    model = model or config.model
    name = f"{model}_encode" if config.workload == "rerank" else model
    path = config.repository / name / "1" / "tokenizer.json"
    if not path.exists():
        return None
    tokenizer = TextTokenizer(path, max_length=1 << 20)
    return lambda texts: sum(len(ids) for ids in tokenizer.encode(texts))


class EmbedWorkload:
    def __init__(self, config: LoadConfig, url: Sequence[str], model: str | None = None, layers: int | None = None):
        """`model` (default: config.model) at depth `layers` (default: full); every variant sends the same texts."""
        self.config = config
        self.model = model or config.model
        self.layers = layers
        texts = load_texts(config, (config.requests + config.warmup) * config.batch_size)
        self.batches = [texts[i : i + config.batch_size] for i in range(0, len(texts), config.batch_size)]
        count = token_counter(config, self.model)
        self.tokens = [count(b) if count else 0 for b in self.batches]
        from nestrank.clients.embed import AsyncEmbedClient

        self.client = AsyncEmbedClient(list(url), self.model, concurrency=IN_FLIGHT, retry=config.retry)

    @property
    def series(self) -> str:
        return f"embed {self.model}" + (f" layers={self.layers}" if self.layers else "")

    async def send(self, i: int) -> tuple[int, int]:
        i = (i + self.config.warmup) % len(self.batches)  # duration-bounded runs cycle through the texts
        out = await self.client.embed(self.batches[i], dimensions=self.config.dimensions, layers=self.layers,
                                      precision=self.config.precision, batch_size=self.config.batch_size)  # fmt: skip
        return len(out), self.tokens[i]

    async def prepare(self) -> None:
        for i in range(-self.config.warmup, 0):
            await self.send(i)

    async def close(self) -> None:
        await self.client.close()

    def in_process(self, progress: str) -> dict:
        from nestrank.export.triton_config import read_config, string_parameters
        from nestrank.protocol.embedding import EmbedderConfig
        from nestrank.serving.pipeline.embedder import Embedder

        model_dir = self.config.repository / self.config.model
        embedder = Embedder.load(
            model_dir / "1", EmbedderConfig.from_parameters(string_parameters(read_config(model_dir)))
        )
        options = {"precision": self.config.precision}
        if self.config.dimensions:
            options["dimensions"] = self.config.dimensions
        for batch in self.batches[: self.config.warmup]:
            embedder.embed(batch, **options)
        w = self.config.warmup
        return sequential(lambda i: (len(embedder.embed(self.batches[w + i], **options)), self.tokens[w + i]),
                          self.config.requests, progress).summary()  # fmt: skip


class RerankWorkload:
    def __init__(self, config: LoadConfig, url: Sequence[str]):
        from nestrank.clients.rerank import AsyncRerankClient

        self.config = config
        self.documents = load_texts(config, config.batch_size * 4)
        self.client = AsyncRerankClient(list(url), config.model, concurrency=IN_FLIGHT, retry=config.retry)
        count = token_counter(config)
        self.doc_tokens = count(self.documents) / len(self.documents) if count else 0
        self.ids: list[str] = []
        self.states = None

    def _candidates(self, i: int) -> list[int]:
        start = (i * 7) % (len(self.documents) - self.config.batch_size + 1)
        return list(range(start, start + self.config.batch_size))

    async def prepare(self) -> None:
        if self.config.passages == "cached":
            self.ids = await self.client.warm(self.documents)
        elif self.config.passages == "states":
            self.states = await self.client.encode_passages(self.documents)
        for i in range(self.config.warmup):
            await self.send(-1 - i)

    async def send(self, i: int) -> tuple[int, int]:
        chosen = self._candidates(abs(i))
        mode = self.config.passages
        if mode == "cached":
            out = await self.client.rerank(self.config.query, passages=[self.ids[j] for j in chosen])
        elif mode == "states":
            out = await self.client.rerank(self.config.query, passages=self.states.subset(chosen))
        else:  # fresh texts: every passage is encoded in this request
            out = await self.client.rerank(self.config.query, [f"{i} {self.documents[j]}" for j in chosen])
        return len(out), int(self.doc_tokens * len(out))

    async def close(self) -> None:
        await self.client.close()

    def in_process(self, progress: str) -> dict | None:
        return None


async def _level(workload, config: LoadConfig, concurrency: int | None, rate: float | None) -> dict:
    label = f"c={concurrency}" if rate is None else f"rate={rate:g}/s"
    if rate is None:
        requests = config.requests if config.duration_s is None else 1 << 40
        result = await closed_loop(workload.send, requests, concurrency, progress=label, duration_s=config.duration_s)
    else:
        requests = config.requests if config.duration_s is None else max(1, round(rate * config.duration_s))
        result = await open_loop(workload.send, requests, rate, seed=config.seed, progress=label)
    return result.summary()


def run(config: LoadConfig, log=print) -> tuple[list[dict], int]:
    """Runs every level; returns (rows, exit code)."""
    from nestrank.serving.launcher.server import ServerConfig, TritonServer

    rows: list[dict] = []
    with ExitStack() as stack:
        urls = list(config.urls)
        if not urls:
            if config.workload == "embed":
                from nestrank.export.repository import ensure_default_models

                ensure_default_models(config.repository)
            server = TritonServer(ServerConfig.on_free_ports(config.repository))
            urls = [stack.enter_context(server).config.grpc_url]
        if config.workload == "embed":  # every (model, depth) in one run, the same texts, one level at a time
            workloads = [EmbedWorkload(config, urls, model, k)
                         for model in (config.model, *config.models) for k in (config.layers or (None,))]  # fmt: skip
        else:
            workloads = [RerankWorkload(config, urls)]
        workload = workloads[0]
        if config.workload == "rerank":
            workload.series = f"rerank {config.model} ({config.passages})"
        if config.in_process and not config.urls:
            baseline = workload.in_process("in-process")
            if baseline:
                rows.append({"series": "in-process ORT", "mode": "sequential", "concurrency": 1, "rate": None,
                             **baseline})  # fmt: skip

        async def levels():
            try:
                for w in workloads:
                    await w.prepare()
                best: dict[tuple, dict] = {}  # (series, concurrency, rate) → the round with most items/s
                for _ in range(config.rounds):  # alternately, so that a slower spell of the machine hits all
                    out = []
                    for c in [] if config.rates else config.concurrency:
                        for w in workloads:
                            out.append({"series": w.series, "mode": "closed", "concurrency": c, "rate": None,
                                        **await _level(w, config, c, None)})  # fmt: skip
                    for r in config.rates:
                        for w in workloads:
                            out.append({"series": w.series, "mode": "open", "concurrency": None, "rate": r,
                                        **await _level(w, config, None, r)})  # fmt: skip
                    for row in out:
                        key = (row["series"], row["concurrency"], row["rate"])
                        if key not in best or row["items_per_s"] > best[key]["items_per_s"]:
                            best[key] = {**row, "rounds": config.rounds}
                return list(best.values())
            finally:
                for w in workloads:
                    await w.close()

        rows += asyncio.run(levels())
    name = f"{config.workload}-{config.model}"
    paths = write_reports(rows, config.out_dir, name, f"nestrank {config.workload}: {config.model}")
    log(format_table(rows))
    if config.workload == "embed" and (config.layers or config.models):
        log(format_variants(rows, config))
    log("wrote " + ", ".join(map(str, paths)))
    meta = {"machine": {"cpus": _cpus(), "platform": platform.platform(), "python": platform.python_version()}}
    (config.out_dir / f"{name}.machine.json").write_text(json.dumps(meta))
    worst = max(r["error_rate"] for r in rows)
    if worst > config.max_error_rate:
        log(f"error rate {worst:.2%} exceeds --max-error-rate {config.max_error_rate:.2%}")
        return rows, 1
    return rows, 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def full_depth(config: LoadConfig, model: str) -> int | None:
    """The model's full depth from its exported config in the repository (None: not there, or not recorded)."""
    from nestrank.export.triton_config import read_config, string_parameters
    from nestrank.protocol.embedding import EmbedderConfig

    try:
        return EmbedderConfig.from_parameters(string_parameters(read_config(config.repository / model))).num_layers
    except (OSError, ValueError, KeyError):
        return None


def format_variants(rows: list[dict], config: LoadConfig) -> str:
    """Per load level: each depth's texts/s and time for the same texts against the full depth, next to the
    FLOP-bound ratio (k of L encoder layers: embeddings, pooling and tokenization left out); each further model
    against the first."""
    lines = []
    served = [r for r in rows if r["series"].startswith("embed ")]
    levels = list(dict.fromkeys((r["concurrency"], r["rate"]) for r in served))
    for level in levels:
        at = {r["series"]: r for r in served if (r["concurrency"], r["rate"]) == level}
        label = f"c={level[0]}" if level[1] is None else f"rate={level[1]:g}/s"
        for model in (config.model, *config.models):
            depth = full_depth(config, model)
            base = at.get(f"embed {model}" + (f" layers={depth}" if config.layers and depth else ""))
            for k in config.layers:
                row = at.get(f"embed {model} layers={k}")
                if not (row and base and row["items_per_s"] and depth):
                    continue
                ratio = base["items_per_s"] / row["items_per_s"]
                lines.append(f"{label} {model} depth {k} of {depth}: {row['items_per_s']:.1f} texts/s, time "
                             f"{ratio:.2f}x the full depth's (FLOP-bound {k / depth:.2f}x)")  # fmt: skip
        first = at.get(f"embed {config.model}" + (f" layers={config.layers[-1]}" if config.layers else ""))
        for model in config.models:
            other = at.get(f"embed {model}" + (f" layers={config.layers[-1]}" if config.layers else ""))
            if first and other and other["items_per_s"]:
                lines.append(
                    f"{label} {config.model}: {first['items_per_s']:.1f} texts/s, {model}: "
                    f"{other['items_per_s']:.1f} texts/s ({first['items_per_s'] / other['items_per_s']:.2f}x)"
                )
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    header = (f"{'series':<46}{'load':>10}{'req/s':>8}{'items/s':>9}{'tok/s':>9}{'p50':>8}{'p90':>8}{'p99':>8}"
              f"{'p99.9':>8}{'max':>8}{'errors':>8}{'shed':>6}")  # fmt: skip
    lines = [header, "-" * len(header)]
    for r in rows:
        load = f"c={r['concurrency']}" if r["rate"] is None else f"{r['rate']:g}/s"
        lines.append(
            f"{r['series'][:45]:<46}{load:>10}{r['requests_per_s']:>8.2f}{r['items_per_s']:>9.1f}"
            f"{r['tokens_per_s']:>9.0f}{r['p50_ms']:>8.0f}{r['p90_ms']:>8.0f}{r['p99_ms']:>8.0f}"
            f"{r['p99.9_ms']:>8.0f}{r['max_ms']:>8.0f}{sum(r['errors'].values()):>8}{r['overloaded']:>6}"
        )
    lines += [f"{r['series'][:33]} {r['concurrency'] or r['rate']}: shed answered in p50 {r['shed_p50_ms']:.0f} ms, "
              f"max {r['shed_max_ms']:.0f} ms" for r in rows if r["overloaded"] and "shed_p50_ms" in r]  # fmt: skip
    lines.append(
        "latencies in ms, successful requests only; open-loop latency counts from each request's scheduled "
        "start; shed: refused as overloaded (queue full or past the wait bound), not in errors"
    )
    return "\n".join(lines)
