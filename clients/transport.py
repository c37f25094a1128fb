"""Endpoints, retries and failover shared by every client.

- Each call has one deadline that all its attempts share: an attempt may use all that remains of it, and a retry
  happens only while time remains. (`RetryPolicy.attempt_timeout_s` can cap attempts, so that a hung endpoint
  costs one attempt and the rest go elsewhere; off by default, since one rerank may rightly take minutes.)
- An endpoint that refuses connections (UNAVAILABLE) is ejected for a while (doubling on repeated failures) and
  the call moves on to an endpoint it has not tried yet. Before an ejected endpoint takes traffic again it is
  re-probed with a health call.
- Overload (the server's queue is full) is not the endpoint's fault: back off, then retry anywhere; no sooner than
  the server's own estimate of when it has room, where it sends one ("retry after N s").
- An unknown model is final (a misspelled name is not an outage), unless the server says it is not ready: with
  `--strict-readiness`, that is a model being reloaded, so the endpoint counts as down.
- A grpc.aio channel belongs to the event loop it was made in, so each loop that uses a client gets channels of
  its own. An endpoint that failed gets a fresh channel, so that a restarted server is used as soon as it is up.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from nestrank.protocol.errors import (
    ClientClosedError,
    DeadlineExceededError,
    ModelNotFoundError,
    NestrankError,
    OverloadedError,
    UnavailableError,
    ValidationError,
    from_grpc_status,
)
from nestrank.protocol.headers import API_KEY_HEADER, grpc_header

DEFAULT_URL = "127.0.0.1:8001"
_MAX_MESSAGE = 2**31 - 1
PROBE_TIMEOUT_S = 1.0  # a readiness probe on loopback or a LAN answers in milliseconds


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # per call, across endpoints; 1 disables retries (benchmarks)
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    attempt_timeout_s: float | None = None  # None: an attempt may use what remains of the call's deadline
    eject_s: float = 1.0  # an endpoint that failed is skipped this long, doubling up to max_eject_s
    max_eject_s: float = 30.0

    def __post_init__(self):
        if self.attempts < 1 or self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("attempts >= 1 and 0 <= initial_backoff_s <= max_backoff_s")
        if (self.attempt_timeout_s is not None and self.attempt_timeout_s <= 0) or not 0 <= self.eject_s:
            raise ValueError("attempt_timeout_s > 0 (or None) and eject_s >= 0")
        if self.max_eject_s < self.eject_s:
            raise ValueError("eject_s <= max_eject_s")

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


# tritonclient.grpc.aio passes these to grpc.aio verbatim (and then leaves out its own keepalive defaults). A channel
# that failed to connect fails requests at once until its next try, which gRPC backs off (100 ms, growing 1.6x to
# the maximum, ±20%); the client does not wait for that: an endpoint that failed gets a fresh channel (see `call`).
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
    # Despite its name, gRPC core reads this as the time a connection attempt may take (default 20 s): long enough
    # for a TLS handshake across regions, short enough that a vanished host does not hold a request for long.
    ("grpc.min_reconnect_backoff_ms", 2_000),
    ("grpc.use_local_subchannel_pool", 1),  # a fresh channel does not inherit another channel's backoff
    ("grpc.keepalive_time_ms", 30_000),  # a dead peer is noticed within a minute, even during a long call
]


def _urls(url: str | Sequence[str]) -> list[str]:
    urls = [url] if isinstance(url, str) else list(url)
    if not urls or not all(isinstance(u, str) and u for u in urls):
        raise ValidationError("url", f"expected a URL or a non-empty list of URLs, got {url!r:.80}")
    return urls


def typed_error(err: InferenceServerException) -> NestrankError:
    return from_grpc_status(err.status(), err.message() or str(err))


class Endpoint:
    """One server: its URL and what the calls learnt about its health (shared by every loop that uses it)."""

    def __init__(self, url: str):
        self.url = url
        self.failures = 0
        self.ejected_until = 0.0

    @property
    def suspect(self) -> bool:
        return self.failures > 0


class _Call:
    """One call's attempts: which endpoint next, with what timeout, and whether (after how long) to retry."""

    def __init__(self, endpoints: list[Endpoint], turn, policy: RetryPolicy, deadline: float, headers):
        self.endpoints = endpoints
        self.turn = turn
        self.policy = policy
        self.deadline = deadline  # time.monotonic() by which the whole call must be done
        self.headers = headers
        self.tried: set[int] = set()
        self.attempt = 0
        self.capped = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def choose(self) -> Endpoint:
        now = time.monotonic()
        start = next(self.turn)
        ring = [self.endpoints[(start + i) % len(self.endpoints)] for i in range(len(self.endpoints))]
        fresh = [e for e in ring if id(e) not in self.tried] or ring
        healthy = [e for e in fresh if e.ejected_until <= now]
        return healthy[0] if healthy else min(fresh, key=lambda e: e.ejected_until)

    def options(self, cap: float | None = None) -> dict:
        remaining = self.remaining()
        if remaining <= 0:
            raise DeadlineExceededError("the call's deadline passed before an endpoint answered")
        cap = self.policy.attempt_timeout_s if cap is None else cap
        self.capped = cap is not None and cap < remaining  # a timeout then means a hung endpoint, not a spent call
        return {"headers": self.headers, "client_timeout": min(cap, remaining) if self.capped else remaining}

    def needs_probe(self, endpoint: Endpoint) -> bool:
        """An endpoint that failed before is asked whether it is ready before it gets a request again."""
        return endpoint.suspect and len(self.endpoints) > 1

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
        hung = isinstance(err, DeadlineExceededError) and self.capped and self.remaining() > 0
        endpoint_down = isinstance(err, UnavailableError) or hung
        if endpoint_down:
            endpoint.failures += 1
            doublings = min(endpoint.failures - 1, 32)  # 2 ** (failures - 1) overflowed a float past ~1,000 failures
            eject = min(self.policy.max_eject_s, self.policy.eject_s * 2**doublings)
            endpoint.ejected_until = time.monotonic() + eject
        if self.attempt >= self.policy.attempts or not (err.retryable or endpoint_down):
            return None
        if hung and all(id(e) in self.tried for e in self.endpoints):
            return None  # a timeout is retried elsewhere only: resending to the same queue adds load
        pause = 0.0 if endpoint_down and len(self.tried) < len(self.endpoints) else self.policy.backoff_s(self.attempt)
        hint = err.retry_after_s if isinstance(err, OverloadedError) else None
        if hint is not None and len(self.tried) == len(self.endpoints):
            # the server's own estimate of when it has room (another replica may have room now: tried first);
            # spread out within what remains, so that refused callers do not come back together
            if hint >= self.remaining():
                return None
            pause = max(pause, hint * random.uniform(1.0, min(1.25, self.remaining() / hint)))
        return pause if pause < self.remaining() else None

    @staticmethod
    def succeeded(endpoint: Endpoint) -> None:
        endpoint.failures = 0
        endpoint.ejected_until = 0.0


class _LoopState:
    """What a client keeps per event loop: a grpc.aio client (channel) per endpoint, and the gate that holds the
    client's requests in flight to `concurrency`."""

    def __init__(self, concurrency: int):
        self.clients: dict[str, object] = {}
        self.gate = asyncio.Semaphore(concurrency)


class AsyncEndpoints:
    """`call(fn, deadline)` runs `fn(client, headers=..., client_timeout=...)` on a `tritonclient.grpc.aio` client,
    failing over as `_Call` decides. At most `concurrency` attempts are in flight at once, whatever the number of
    calls (per event loop: a loop cannot wait on another loop's semaphore)."""

    def __init__(
        self,
        url: str | Sequence[str],
        retry: RetryPolicy,
        credentials: Credentials = Credentials(),
        concurrency: int = 4,
    ):
        self.retry = retry
        self.credentials = credentials
        self.concurrency = concurrency
        self.endpoints = [Endpoint(u) for u in _urls(url)]
        self._turn = itertools.count()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._lock = threading.Lock()  # loops on other threads may use the client at the same time
        self.closed = False

    def _connect(self, url: str):
        return grpcclient_aio.InferenceServerClient(url, **self.credentials.client_options())

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.closed:
                raise ClientClosedError("the client is closed")
            for gone in [other for other in self._loops if other.is_closed()]:
                del self._loops[gone]  # an asyncio.run() that finished: its channels went with its loop
            if loop not in self._loops:
                self._loops[loop] = _LoopState(self.concurrency)
            return self._loops[loop]

    def _client(self, state: _LoopState, endpoint: Endpoint):
        if endpoint.url not in state.clients:
            state.clients[endpoint.url] = self._connect(endpoint.url)
        return state.clients[endpoint.url]

    async def call(self, fn, deadline: float):
        """`fn`'s result, retried and failed over until `deadline` (time.monotonic()); typed errors only."""
        state = self._state()
        call = _Call(self.endpoints, self._turn, self.retry, deadline, self.credentials.headers)
        while True:
            if self.closed:  # closed from another thread while this call was backing off
                raise ClientClosedError("the client is closed")
            endpoint = call.choose()
            client = self._client(state, endpoint)
            try:
                async with state.gate:
                    result = await self._attempt(fn, client, endpoint, call)
            except NestrankError as err:
                if isinstance(err, UnavailableError) and state.clients.get(endpoint.url) is client:
                    # A channel that could not connect waits out gRPC's reconnect backoff (up to 0.3 s here, 2 min by
                    # default) while the server may already be back; a fresh one connects on its first request. The
                    # old one closes when the calls still on it finish.
                    del state.clients[endpoint.url]
                await asyncio.sleep(call.retry_after(endpoint, err))
                if call.remaining() <= 0:
                    raise err  # the pause overran the deadline (a loaded machine): the last answer says more
                continue
            call.succeeded(endpoint)
            return result

    async def _attempt(self, fn, client, endpoint: Endpoint, call: _Call):
        try:
            if call.needs_probe(endpoint) and not await client.is_server_ready(**call.options(PROBE_TIMEOUT_S)):
                raise UnavailableError(f"{endpoint.url} is not ready")
            return await fn(client, **call.options())
        except InferenceServerException as exc:
            err = typed_error(exc)
        if isinstance(err, ModelNotFoundError) and not await self._ready(client, call):
            # Under --strict-readiness a server with a model being reloaded is not ready: an outage, not a typo.
            raise UnavailableError(f"{endpoint.url} is not ready (a model is loading): {err}")
        raise err

    @staticmethod
    async def _ready(client, call: _Call) -> bool:
        try:
            return await client.is_server_ready(**call.options(PROBE_TIMEOUT_S))
        except InferenceServerException:
            return False

    async def close(self) -> None:
        """Closes every channel: this loop's here, another running loop's in that loop (without waiting)."""
        with self._lock:
            self.closed = True
            loops, self._loops = self._loops, {}
        current = asyncio.get_running_loop()
        for loop, state in loops.items():
            for client in state.clients.values():
                if loop is current:
                    await client.close()
                elif loop.is_running():
                    asyncio.run_coroutine_threadsafe(client.close(), loop)
