"""Endpoints, retries and failover shared by every client.

- Each call has one deadline (the client's `timeout_s`) that all its attempts share; each attempt is also
  bounded by `attempt_timeout_s`, so a hung endpoint costs one attempt, not the whole call.
- An endpoint that refuses connections (UNAVAILABLE) or hangs (DEADLINE_EXCEEDED) is ejected for a while
  (doubling on repeated failures) and the call moves on to an endpoint it has not tried yet. Before an
  ejected endpoint takes traffic again it is re-probed with a health call.
- Overload (the server's queue is full) is not the endpoint's fault: back off, then retry anywhere.
- Channels reconnect quickly after a server restart: short reconnect backoff, and a subchannel pool of
  their own, so a new client does not inherit another client's backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from nestrank.protocol.errors import (
    DeadlineExceededError,
    NestrankError,
    OverloadedError,
    UnavailableError,
    from_grpc_status,
)
from nestrank.protocol.headers import API_KEY_HEADER, grpc_header

DEFAULT_URL = "127.0.0.1:8001"
_MAX_MESSAGE = 2**31 - 1


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # per call, across endpoints; 1 disables retries (benchmarks)
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    attempt_timeout_s: float = 30.0  # one attempt; the call's own deadline is the client's timeout_s
    eject_s: float = 1.0  # an endpoint that failed is skipped this long, doubling up to max_eject_s
    max_eject_s: float = 30.0

    def __post_init__(self):
        if self.attempts < 1 or self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("attempts >= 1 and 0 <= initial_backoff_s <= max_backoff_s")
        if self.attempt_timeout_s <= 0 or self.eject_s < 0 or self.max_eject_s < self.eject_s:
            raise ValueError("attempt_timeout_s > 0 and 0 <= eject_s <= max_eject_s")

    def backoff_s(self, attempt: int) -> float:
        return random.uniform(0.5, 1.0) * min(self.max_backoff_s, self.initial_backoff_s * 2**attempt)


NO_RETRIES = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Credentials:
    """What a client presents: an API key (`nestrank serve --api-key`) and TLS settings (PEM file paths)."""

    api_key: str | None = None
    ssl: bool = False
    root_certificates: str | None = None  # PEM file of the CA that signed the server's certificate
    private_key: str | None = None  # mutual TLS: the client's key and certificate chain
    certificate_chain: str | None = None

    @classmethod
    def from_env(cls, api_key: str | None = None, **tls) -> Credentials:
        return cls(api_key=api_key or os.environ.get("NESTRANK_API_KEY") or None, **tls)

    @property
    def headers(self) -> dict[str, str] | None:
        return {grpc_header(API_KEY_HEADER): self.api_key} if self.api_key else None

    def client_options(self) -> dict:
        options = {"channel_args": CHANNEL_ARGS}
        if self.ssl or self.root_certificates:
            options.update(ssl=True, root_certificates=self.root_certificates, private_key=self.private_key,
                           certificate_chain=self.certificate_chain)  # fmt: skip
        return options


CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 30_000),
]


def _urls(url: str | Sequence[str]) -> list[str]:
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("at least one url")
    return urls


def typed_error(err: InferenceServerException) -> NestrankError:
    return from_grpc_status(err.status(), err.message())


class Endpoint:
    def __init__(self, url: str, client=None):
        self.url = url
        self.client = client  # connected on first use, inside the loop that uses it
        self.failures = 0
        self.ejected_until = 0.0

    @property
    def suspect(self) -> bool:
        return self.failures > 0


class _Call:
    """One call's attempts: which endpoint next, with what timeout, and whether (after how long) to retry."""

    def __init__(self, endpoints: list[Endpoint], turn, policy: RetryPolicy, deadline_s: float, headers):
        self.endpoints = endpoints
        self.turn = turn
        self.policy = policy
        self.deadline = time.monotonic() + deadline_s
        self.headers = headers
        self.tried: set[int] = set()
        self.attempt = 0

    def choose(self) -> Endpoint:
        now = time.monotonic()
        start = next(self.turn)
        ring = [self.endpoints[(start + i) % len(self.endpoints)] for i in range(len(self.endpoints))]
        fresh = [e for e in ring if id(e) not in self.tried] or ring
        healthy = [e for e in fresh if e.ejected_until <= now]
        return healthy[0] if healthy else min(fresh, key=lambda e: e.ejected_until)

    def options(self) -> dict:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError("the call's deadline passed before an endpoint answered")
        return {"headers": self.headers, "client_timeout": min(self.policy.attempt_timeout_s, remaining)}

    def needs_probe(self, endpoint: Endpoint) -> bool:
        """An endpoint that failed before is asked whether it is ready before it gets a request again."""
        return endpoint.suspect and len(self.endpoints) > 1

    def probe_options(self) -> dict:
        return {"headers": self.headers, "client_timeout": min(1.0, self.options()["client_timeout"])}

    def retry_after(self, endpoint: Endpoint, err: NestrankError) -> float:
        """Seconds to wait before the next attempt; raises `err` when the call should give up."""
        pause = self.failed(endpoint, err)
        if pause is None:
            raise err
        return pause

    def failed(self, endpoint: Endpoint, err: NestrankError) -> float | None:
        """Seconds to wait before the next attempt, or None: give up."""
        self.tried.add(id(endpoint))
        self.attempt += 1
        endpoint_down = isinstance(err, (UnavailableError, DeadlineExceededError)) and not isinstance(
            err, OverloadedError
        )
        if endpoint_down:
            endpoint.failures += 1
            eject = min(self.policy.max_eject_s, self.policy.eject_s * 2 ** (endpoint.failures - 1))
            endpoint.ejected_until = time.monotonic() + eject
        if self.attempt >= self.policy.attempts or not (err.retryable or endpoint_down):
            return None
        if isinstance(err, DeadlineExceededError) and all(id(e) in self.tried for e in self.endpoints):
            return None  # a timeout is retried elsewhere only: resending to the same queue adds load
        pause = 0.0 if endpoint_down and len(self.tried) < len(self.endpoints) else self.policy.backoff_s(self.attempt)
        return pause if time.monotonic() + pause < self.deadline else None

    @staticmethod
    def succeeded(endpoint: Endpoint) -> None:
        endpoint.failures = 0
        endpoint.ejected_until = 0.0


class AsyncEndpoints:
    """`call(fn)` runs `fn(client, headers=..., client_timeout=...)` on a `tritonclient.grpc.aio` client, failing
    over as `_Call` decides (the synchronous clients run these on a loop of their own)."""

    def __init__(self, url: str | Sequence[str], retry: RetryPolicy, credentials: Credentials = Credentials()):
        self.retry = retry
        self.credentials = credentials
        self.endpoints = [Endpoint(u) for u in _urls(url)]
        self._turn = itertools.count()

    def _client(self, endpoint: Endpoint):
        # A grpc.aio channel belongs to the loop it was made in, so it is made in the first call's loop.
        if endpoint.client is None:
            endpoint.client = grpcclient_aio.InferenceServerClient(endpoint.url, **self.credentials.client_options())
        return endpoint.client

    async def call(self, fn, deadline_s: float):
        call = _Call(self.endpoints, self._turn, self.retry, deadline_s, self.credentials.headers)
        while True:
            endpoint = call.choose()
            try:
                client = self._client(endpoint)
                if call.needs_probe(endpoint) and not await client.is_server_ready(**call.probe_options()):
                    raise InferenceServerException(f"{endpoint.url}: not ready", status="StatusCode.UNAVAILABLE")
                result = await fn(client, **call.options())
            except InferenceServerException as exc:
                await asyncio.sleep(call.retry_after(endpoint, typed_error(exc)))
                continue
            call.succeeded(endpoint)
            return result

    async def close(self) -> None:
        for endpoint in self.endpoints:
            if endpoint.client is not None:
                await endpoint.client.close()
