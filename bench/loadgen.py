"""Load generation and its statistics.

Closed loop: N workers, each sends its next request when the last one answers (a concurrency sweep).
Open loop: requests start on a schedule at a fixed rate whether or not earlier ones have answered, and
latency is measured from the *scheduled* start, so a slow server cannot hide its queueing delay by
slowing the load generator down (coordinated omission).
"""

from __future__ import annotations

import asyncio
import collections
import csv
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nestrank.protocol.errors import NestrankError, OverloadedError

PERCENTILES = (50, 90, 99, 99.9)

# send(i) runs request i and returns (items, tokens) it carried.
Send = Callable[[int], Awaitable[tuple[int, int]]]


@dataclass
class RunResult:
    """Latencies of successful requests, errors by status code, and the wall time of the run."""

    latencies_s: list[float] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)  # by status code, overload apart
    overloaded: int = 0  # refused because the server's queue was full (load shedding), counted on their own
    shed_latencies_s: list[float] = field(default_factory=list)  # how long each of those took to be refused
    items: int = 0  # texts (or candidates) in successful requests
    tokens: int = 0
    wall_s: float = 0.0

    def record_error(self, err: Exception, elapsed_s: float | None = None) -> None:
        if isinstance(err, OverloadedError):
            self.overloaded += 1
            if elapsed_s is not None:
                self.shed_latencies_s.append(elapsed_s)
        else:
            self.errors[err.grpc_code if isinstance(err, NestrankError) else type(err).__name__] += 1

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_s) * 1e3
        failed = sum(self.errors.values())
        total = len(self.latencies_s) + failed + self.overloaded
        per_s = (lambda n: n / self.wall_s) if self.wall_s > 0 else (lambda n: 0.0)
        row = {
            "requests": total,
            "errors": dict(self.errors),
            "error_rate": failed / total if total else 0.0,
            "overloaded": self.overloaded,
            "overload_rate": self.overloaded / total if total else 0.0,
            "requests_per_s": per_s(len(self.latencies_s)),
            "items_per_s": per_s(self.items),
            "tokens_per_s": per_s(self.tokens),
        }
        for p in PERCENTILES:
            row[f"p{p:g}_ms"] = float(np.percentile(lat, p)) if lat.size else float("nan")
        row["max_ms"] = float(lat.max()) if lat.size else float("nan")
        shed = np.asarray(self.shed_latencies_s) * 1e3
        row["shed_p50_ms"] = float(np.percentile(shed, 50)) if shed.size else float("nan")
        row["shed_max_ms"] = float(shed.max()) if shed.size else float("nan")
        return row


def _bar(total: int | None, label: str | None):
    return tqdm(total=total, desc=label, disable=label is None, leave=False, unit="req")


async def _timed(send: Send, i: int, start: float, result: RunResult) -> None:
    try:
        items, tokens = await send(i)
    except Exception as err:  # a load test counts failures, it does not stop on them
        result.record_error(err, time.perf_counter() - start)
    else:
        result.latencies_s.append(time.perf_counter() - start)
        result.items += items
        result.tokens += tokens


async def closed_loop(send: Send, requests: int, concurrency: int, progress: str | None = None,
                      duration_s: float | None = None) -> RunResult:  # fmt: skip
    """`concurrency` workers share requests 0..requests-1, stopping early once `duration_s` has passed."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    result = RunResult()
    next_index = iter(range(requests))
    bar = _bar(None if duration_s else requests, progress)
    start = time.perf_counter()
    deadline = start + duration_s if duration_s else float("inf")

    async def worker():
        for i in next_index:
            if time.perf_counter() >= deadline:
                return
            await _timed(send, i, time.perf_counter(), result)
            bar.update(1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - start
    bar.close()
    return result


def arrival_offsets(requests: int, rate: float, seed: int, poisson: bool = True) -> np.ndarray:
    """Start times (s) of an open-loop run: Poisson arrivals at `rate`/s, or evenly spaced."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if not poisson:
        return np.arange(requests) / rate
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=requests)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


async def open_loop(send: Send, requests: int, rate: float, seed: int = 0, progress: str | None = None,
                    max_in_flight: int = 1024) -> RunResult:  # fmt: skip
    """Requests start at their scheduled times; latency counts from the schedule, not the actual send."""
    result = RunResult()
    offsets = arrival_offsets(requests, rate, seed)
    bar = _bar(requests, progress)
    in_flight: set[asyncio.Task] = set()
    start = time.perf_counter()

    async def one(i: int, scheduled: float) -> None:
        await _timed(send, i, scheduled, result)
        bar.update(1)

    for i, offset in enumerate(offsets):
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:  # the generator itself is saturated: count it, don't hide it
            result.errors["CLIENT_SATURATED"] += 1
            bar.update(1)
            continue
        task = asyncio.create_task(one(i, start + offset))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    result.wall_s = time.perf_counter() - start
    bar.close()
    return result


def write_reports(rows: Sequence[dict], out_dir: Path, name: str, title: str) -> list[Path]:
    """`name`.json, `name`.csv and `name`.png (latency percentiles against throughput) in out_dir."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.csv", out_dir / f"{name}.png"]
    paths[0].write_text(json.dumps(list(rows), indent=2))
    columns = [k for k in rows[0] if k != "errors"] + ["errors"]
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "errors": json.dumps(row["errors"])})
    plot_latency(rows, paths[2], title)
    return paths


def plot_latency(rows: Sequence[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for series in sorted({r.get("series", "") for r in rows}):
        points = sorted((r for r in rows if r.get("series", "") == series), key=lambda r: r["items_per_s"])
        x = [r["items_per_s"] for r in points]
        for p, style in zip(PERCENTILES, ("-o", "--s", ":^", "-.v")):
            ax.plot(x, [r[f"p{p:g}_ms"] for r in points], style, label=f"{series} p{p:g}".strip())
        for r in points:  # which load each point is
            load = f"c={r['concurrency']}" if r.get("rate") is None else f"{r['rate']:g}/s"
            ax.annotate(load, (r["items_per_s"], r["p50_ms"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("throughput (items/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sequential(run: Callable[[int], tuple[int, int]], requests: int, progress: str | None = None) -> RunResult:
    """The in-process baseline: one request after another in this thread."""
    result = RunResult()
    start = time.perf_counter()
    for i in tqdm(range(requests), desc=progress, disable=progress is None, leave=False, unit="req"):
        t0 = time.perf_counter()
        items, tokens = run(i)
        result.latencies_s.append(time.perf_counter() - t0)
        result.items += items
        result.tokens += tokens
    result.wall_s = time.perf_counter() - start
    return result
