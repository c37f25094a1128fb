"""Load generation and its statistics: closed loop (N workers) over a fixed list of requests."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from nestrank.errors import NestrankError

PERCENTILES = (50, 90, 99, 99.9)


@dataclass
class RunResult:
    """Latencies of successful requests, errors by status code, and the wall time of the run."""

    latencies_s: list[float] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)
    items: int = 0  # texts (or candidates) in successful requests
    wall_s: float = 0.0

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_s) * 1e3
        total = len(self.latencies_s) + sum(self.errors.values())
        row = {
            "requests": total,
            "errors": dict(self.errors),
            "error_rate": (sum(self.errors.values()) / total) if total else 0.0,
            "requests_per_s": len(self.latencies_s) / self.wall_s if self.wall_s else 0.0,
            "items_per_s": self.items / self.wall_s if self.wall_s else 0.0,
        }
        for p in PERCENTILES:
            row[f"p{p:g}_ms"] = float(np.percentile(lat, p)) if lat.size else float("nan")
        row["max_ms"] = float(lat.max()) if lat.size else float("nan")
        return row


async def closed_loop(
    send: Callable[[int], Awaitable[int]], requests: int, concurrency: int, progress: str | None = None
) -> RunResult:
    """`concurrency` workers send requests 0..requests-1; `send(i)` returns the items it carried."""
    result = RunResult()
    next_index = iter(range(requests))
    bar = tqdm(total=requests, desc=progress, disable=progress is None, leave=False, unit="req")

    async def worker():
        for i in next_index:
            start = time.perf_counter()
            try:
                items = await send(i)
            except NestrankError as err:
                result.errors[err.grpc_code] += 1
            else:
                result.latencies_s.append(time.perf_counter() - start)
                result.items += items
            bar.update(1)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - start
    bar.close()
    return result


def sequential(run: Callable[[int], int], requests: int, progress: str | None = None) -> RunResult:
    """The in-process baseline: one request after another in this thread."""
    result = RunResult()
    start = time.perf_counter()
    for i in tqdm(range(requests), desc=progress, disable=progress is None, leave=False, unit="req"):
        t0 = time.perf_counter()
        result.items += run(i)
        result.latencies_s.append(time.perf_counter() - t0)
    result.wall_s = time.perf_counter() - start
    return result
