"""Endpoints, retries and failover shared by every client: requests rotate over the endpoints, and
UNAVAILABLE / RESOURCE_EXHAUSTED are retried (on the next endpoint) with backoff within a deadline."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from nestrank.errors import NestrankError, from_grpc_status

DEFAULT_URL = "127.0.0.1:8001"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    deadline_s: float = 120.0

    def __post_init__(self):
        if self.attempts < 1 or self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("attempts >= 1 and 0 <= initial_backoff_s <= max_backoff_s")

    def backoff_s(self, attempt: int) -> float:
        return random.uniform(0.5, 1.0) * min(self.max_backoff_s, self.initial_backoff_s * 2**attempt)


def _urls(url: str | Sequence[str]) -> list[str]:
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("at least one url")
    return urls


def typed_error(err: InferenceServerException) -> NestrankError:
    return from_grpc_status(err.status(), err.message())


class Endpoints:
    def __init__(self, url: str | Sequence[str], retry: RetryPolicy):
        self.retry = retry
        self.clients = [grpcclient.InferenceServerClient(u) for u in _urls(url)]
        self._turn = itertools.count()

    def call(self, fn):
        """fn(client) with retries over endpoints; raises a typed NestrankError."""
        deadline = time.monotonic() + self.retry.deadline_s
        for attempt in range(self.retry.attempts):
            client = self.clients[next(self._turn) % len(self.clients)]
            try:
                return fn(client)
            except InferenceServerException as exc:
                err = typed_error(exc)
            pause = self.retry.backoff_s(attempt)
            if not err.retryable or attempt == self.retry.attempts - 1 or time.monotonic() + pause > deadline:
                raise err
            time.sleep(pause)

    def close(self) -> None:
        for client in self.clients:
            client.close()


class AsyncEndpoints:
    def __init__(self, url: str | Sequence[str], retry: RetryPolicy):
        self.retry = retry
        self.clients = [grpcclient_aio.InferenceServerClient(u) for u in _urls(url)]
        self._turn = itertools.count()

    async def call(self, fn):
        deadline = time.monotonic() + self.retry.deadline_s
        for attempt in range(self.retry.attempts):
            client = self.clients[next(self._turn) % len(self.clients)]
            try:
                return await fn(client)
            except InferenceServerException as exc:
                err = typed_error(exc)
            pause = self.retry.backoff_s(attempt)
            if not err.retryable or attempt == self.retry.attempts - 1 or time.monotonic() + pause > deadline:
                raise err
            await asyncio.sleep(pause)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def model_parameters(model_config: dict) -> tuple[str, int, dict[str, str]]:
    """(name, max_batch_size, string parameters) from get_model_config(as_json=True)."""
    config = model_config.get("config", model_config)
    parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    return config["name"], int(config.get("max_batch_size", 0)), parameters
