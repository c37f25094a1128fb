"""The HTTP front's cost against gRPC: the same texts through `POST /v1/embeddings` (base64, as the openai SDK asks)
and through the gRPC client, against one Triton, at the same concurrency; Infinity's own HTTP server beside them
when its venv exists. The front runs as `nestrank serve` runs it, a process of its own.

`nestrank bench compare --http-only` runs this alone and rewrites only its own section of bench/RESULTS.md; the full
`nestrank bench compare` adds the HTTP row to its table.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from nestrank.bench.loadgen import RunResult, closed_loop


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """User + system CPU time of a process (and, with `tree`, of every process under it), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            if tree:
                for task in os.listdir(f"/proc/{current}/task"):
                    pids += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


class FrontProcess:
    """`python -m nestrank.api` on a free loopback port, against `grpc_url`."""

    def __init__(self, grpc_url: str, repository: Path):
        from nestrank.serving.launcher.server import free_ports

        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "nestrank.api", "--triton", grpc_url, "--port", str(self.port),
                        "--repository", str(repository)]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> FrontProcess:
        env = {k: v for k, v in os.environ.items() if k != "NESTRANK_API_KEY"}
        self.process = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"the HTTP front did not start: {self.process.stderr.read()[-500:]!r}")
                time.sleep(0.1)

    def cpu_s(self) -> float:
        return cpu_seconds(self.process.pid)

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def http_embed_run(url: str, model: str, batches: list[list[str]], concurrency: int) -> tuple[RunResult, np.ndarray]:
    """Every batch once through POST /v1/embeddings at `concurrency` (after a warm-up); rows in input order."""
    import httpx

    outputs: list[np.ndarray | None] = [None] * len(batches)

    async def measure() -> RunResult:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

            async def post(texts: list[str]) -> np.ndarray:
                response = await client.post("/v1/embeddings", json={"model": model, "input": texts,
                                                                      "encoding_format": "base64"})  # fmt: skip
                response.raise_for_status()
                data = sorted(response.json()["data"], key=lambda d: d["index"])
                return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])

            for batch in batches[:4]:
                await post(batch)

            async def send(i):
                outputs[i] = await post(batches[i])
                return len(batches[i]), 0

            return await closed_loop(send, len(batches), concurrency)

    result = asyncio.run(measure())
    return result, np.concatenate(outputs)


def grpc_embed_run(url: str, model: str, batches: list[list[str]], concurrency: int, batch_size: int):
    from nestrank.clients.embed import AsyncEmbedClient
    from nestrank.clients.transport import NO_RETRIES

    outputs: list[np.ndarray | None] = [None] * len(batches)

    async def measure() -> RunResult:
        async with AsyncEmbedClient(url, model, concurrency=concurrency, retry=NO_RETRIES) as client:
            for batch in batches[:4]:
                await client.embed(batch)

            async def send(i):
                outputs[i] = await client.embed(batches[i], batch_size=batch_size)
                return len(batches[i]), 0

            return await closed_loop(send, len(batches), concurrency)

    result = asyncio.run(measure())
    return result, np.concatenate(outputs)
