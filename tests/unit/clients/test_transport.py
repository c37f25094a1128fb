"""The retry and failover decisions, on fake endpoints: ejection, re-probe, timeouts retried elsewhere only,
overload backed off without ejection, refusals final, one deadline for the whole call."""

from __future__ import annotations

import asyncio
import time

import pytest
from tritonclient.utils import InferenceServerException

from nestrank.clients.transport import AsyncEndpoints, Endpoint, RetryPolicy
from nestrank.protocol.errors import DeadlineExceededError, OverloadedError, UnauthenticatedError, UnavailableError

FAST = RetryPolicy(attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002, eject_s=5.0)


class FakeClient:
    """Answers each call from a script: "ok", or an exception to raise; records the per-attempt options."""

    def __init__(self, name: str, script, ready: bool = True):
        self.name, self.script, self.ready = name, list(script), ready
        self.calls: list[dict] = []
        self.probes = 0

    async def infer(self, **options):
        self.calls.append(options)
        outcome = self.script.pop(0) if self.script else "ok"
        if outcome != "ok":
            raise outcome
        return self.name

    async def is_server_ready(self, **options):
        self.probes += 1
        return self.ready

    async def close(self):
        pass


def down():
    return InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")


def hung():
    return InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")


def full():
    return InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")


def refused():
    return InferenceServerException(
        "This protocol is restricted, expecting header 'x'", status="StatusCode.UNAVAILABLE"
    )


def endpoints(*clients, policy=FAST) -> AsyncEndpoints:
    pool = AsyncEndpoints("127.0.0.1:1", policy)  # the real class, its gRPC clients swapped for fakes
    pool.endpoints = [Endpoint(c.name, c) for c in clients]
    return pool


def call(pool: AsyncEndpoints, deadline_s: float = 10.0):
    return asyncio.run(pool.call(lambda client, **options: client.infer(**options), deadline_s))


def test_a_dead_endpoint_is_ejected_and_the_call_moves_on():
    dead, live = FakeClient("dead", [down()] * 10), FakeClient("live", [])
    pool = endpoints(dead, live)
    assert [call(pool) for _ in range(6)] == ["live"] * 6
    assert len(dead.calls) == 1  # tried once, then skipped while ejected: not four times in a row
    assert pool.endpoints[0].ejected_until > time.monotonic()


def test_an_ejected_endpoint_is_reprobed_before_it_gets_traffic_again():
    flaky, live = FakeClient("flaky", [down()], ready=False), FakeClient("live", [])
    pool = endpoints(
        flaky, live, policy=RetryPolicy(attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002, eject_s=0)
    )
    call(pool)  # flaky fails, live answers
    results = [call(pool) for _ in range(4)]
    assert flaky.probes >= 1 and len(flaky.calls) == 1  # probed (not ready), never sent a request
    assert set(results) == {"live"}
    flaky.ready = True
    assert "flaky" in {call(pool) for _ in range(4)}  # ready again: back in the rotation


def test_a_timeout_is_retried_on_another_endpoint_only():
    slow, live = FakeClient("slow", [hung()]), FakeClient("live", [])
    assert call(endpoints(slow, live)) == "live"
    alone = FakeClient("alone", [hung(), "ok"])
    with pytest.raises(DeadlineExceededError):
        call(endpoints(alone))  # resending to the same queue would only add load
    assert len(alone.calls) == 1


def test_overload_backs_off_without_ejecting():
    busy = FakeClient("busy", [full(), full(), "ok"])
    pool = endpoints(busy)
    assert call(pool) == "busy" and len(busy.calls) == 3
    assert pool.endpoints[0].failures == 0


def test_a_refused_key_is_final():
    guarded = FakeClient("guarded", [refused()] * 5)
    with pytest.raises(UnauthenticatedError):
        call(endpoints(guarded, FakeClient("other", [refused()] * 5)))
    assert len(guarded.calls) <= 1


def test_attempts_and_the_deadline_bound_the_call():
    dead = [FakeClient(f"dead{i}", [down()] * 10) for i in range(2)]
    with pytest.raises(UnavailableError):
        call(endpoints(*dead, policy=RetryPolicy(attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)))
    assert sum(len(d.calls) for d in dead) == 3  # attempts (a re-probe before the third does not count)
    patient = FakeClient("patient", [full()] * 100)
    started = time.monotonic()
    with pytest.raises(OverloadedError):
        call(endpoints(patient, policy=RetryPolicy(attempts=100, initial_backoff_s=0.05, max_backoff_s=0.05)), 0.3)
    assert time.monotonic() - started < 0.5


def test_each_attempt_gets_what_is_left_of_the_deadline():
    slow = FakeClient("slow", [])
    call(endpoints(slow, policy=RetryPolicy(attempt_timeout_s=30)), deadline_s=2.0)
    assert 1.9 < slow.calls[0]["client_timeout"] <= 2.0
