"""The retry and failover decisions, on fake endpoints (the wire itself is tested in test_client_lifecycle.py and
tests/integration): ejection, re-probe, timeouts retried elsewhere only, overload backed off without ejection,
refusals final, an unknown model told apart from a reloading one, one deadline for the whole call."""

from __future__ import annotations

import asyncio
import time

import pytest
from tritonclient.utils import InferenceServerException

from nestrank.clients.transport import AsyncEndpoints, RetryPolicy
from nestrank.protocol.errors import (
    DeadlineExceededError,
    ModelNotFoundError,
    OverloadedError,
    UnauthenticatedError,
    UnavailableError,
)

FAST = RetryPolicy(attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002, eject_s=5.0)


class FakeClient:
    """Answers each call from a script: "ok", or an exception to raise; records the per-attempt options."""

    def __init__(self, name: str, script=(), ready: bool = True, seconds: float = 0.0):
        self.name, self.script, self.ready, self.seconds = name, list(script), ready, seconds
        self.calls: list[dict] = []
        self.probes = 0
        self.in_flight = self.max_in_flight = 0

    async def infer(self, **options):
        self.calls.append(options)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.in_flight -= 1
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


def unknown_model():
    return InferenceServerException("Request for unknown model: 'm' is not found", status="StatusCode.NOT_FOUND")


class FakeEndpoints(AsyncEndpoints):
    """The real class, its gRPC clients swapped for fakes (one per URL)."""

    def __init__(self, clients, policy, concurrency=4):
        super().__init__([c.name for c in clients], policy, concurrency=concurrency)
        self.fakes = {c.name: c for c in clients}

    def _connect(self, url):
        return self.fakes[url]


def endpoints(*clients, policy=FAST, concurrency=4) -> FakeEndpoints:
    return FakeEndpoints(clients, policy, concurrency)


def call(pool: AsyncEndpoints, deadline_s: float = 10.0):
    async def one():
        return await pool.call(lambda client, **options: client.infer(**options), time.monotonic() + deadline_s)

    return asyncio.run(one())


def test_a_dead_endpoint_is_ejected_and_the_call_moves_on():
    dead, live = FakeClient("dead", [down()] * 10), FakeClient("live")
    pool = endpoints(dead, live)
    assert [call(pool) for _ in range(6)] == ["live"] * 6
    assert len(dead.calls) == 1  # tried once, then skipped while ejected: not four times in a row
    assert pool.endpoints[0].ejected_until > time.monotonic()


def test_an_endpoint_down_for_thousands_of_calls_is_ejected_for_at_most_max_eject_s():
    """The doubling stops at max_eject_s, however many calls failed (2 ** 1023 overflowed a float)."""
    dead = FakeClient("dead", [down()] * 3000)
    pool = endpoints(dead, policy=RetryPolicy(attempts=1, eject_s=1.0, max_eject_s=30.0))
    pool.endpoints[0].failures = 2000
    with pytest.raises(UnavailableError):
        call(pool)
    assert pool.endpoints[0].failures == 2001
    assert 29 < pool.endpoints[0].ejected_until - time.monotonic() <= 30


def test_an_ejected_endpoint_is_reprobed_before_it_gets_traffic_again():
    flaky, live = FakeClient("flaky", [down()], ready=False), FakeClient("live")
    pool = endpoints(
        flaky, live, policy=RetryPolicy(attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002, eject_s=0)
    )
    call(pool)  # flaky fails, live answers
    results = [call(pool) for _ in range(4)]
    assert flaky.probes >= 1 and len(flaky.calls) == 1  # probed (not ready), never sent a request
    assert set(results) == {"live"}
    flaky.ready = True
    assert "flaky" in {call(pool) for _ in range(4)}  # ready again: back in the rotation


def test_a_capped_attempt_that_times_out_is_retried_on_another_endpoint_only():
    capped = RetryPolicy(attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002, attempt_timeout_s=1.0)
    slow, live = FakeClient("slow", [hung()]), FakeClient("live")
    assert call(endpoints(slow, live, policy=capped)) == "live"
    alone = FakeClient("alone", [hung(), "ok"])
    with pytest.raises(DeadlineExceededError):
        call(endpoints(alone, policy=capped))  # resending to the same queue would only add load
    assert len(alone.calls) == 1


def test_a_spent_deadline_is_final_and_ejects_no_one():
    """Without a cap an attempt has the whole deadline: its timeout is the call's, not the endpoint's fault."""
    slow, other = FakeClient("slow", [hung()]), FakeClient("other", [hung()])
    pool = endpoints(slow, other)
    with pytest.raises(DeadlineExceededError):
        call(pool)  # as when gRPC's clock runs out a moment before ours
    assert len(slow.calls) + len(other.calls) == 1 and all(e.failures == 0 for e in pool.endpoints)


def test_overload_backs_off_without_ejecting():
    busy = FakeClient("busy", [full(), full(), "ok"])
    pool = endpoints(busy)
    assert call(pool) == "busy" and len(busy.calls) == 3
    assert pool.endpoints[0].failures == 0


def test_a_refused_key_is_final():
    guarded, other = FakeClient("guarded", [refused()] * 5), FakeClient("other", [refused()] * 5)
    with pytest.raises(UnauthenticatedError):
        call(endpoints(guarded, other))
    assert len(guarded.calls) + len(other.calls) == 1  # one attempt, on whichever endpoint came first


def test_an_unknown_model_on_a_ready_server_is_final():
    ready, other = FakeClient("ready", [unknown_model()] * 5), FakeClient("other", [unknown_model()] * 5)
    pool = endpoints(ready, other)
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        call(pool)
    assert len(ready.calls) + len(other.calls) == 1  # not retried
    assert ready.probes + other.probes == 1  # readiness asked once, to tell a typo from a reload
    assert all(e.failures == 0 and e.ejected_until == 0 for e in pool.endpoints)  # no one ejected


def test_an_unknown_model_on_a_server_that_is_not_ready_is_a_reload():
    reloading, live = FakeClient("reloading", [unknown_model()], ready=False), FakeClient("live")
    pool = endpoints(reloading, live)
    assert call(pool) == "live"  # moved on at once
    assert pool.endpoints[0].failures == 1 and pool.endpoints[0].ejected_until > time.monotonic()
    alone = FakeClient("alone", [unknown_model()] * 10, ready=False)
    with pytest.raises(UnavailableError, match="not ready"):
        call(endpoints(alone))
    assert len(alone.calls) == FAST.attempts


def test_attempts_bound_the_call():
    dead = [FakeClient(f"dead{i}", [down()] * 10) for i in range(2)]
    with pytest.raises(UnavailableError):
        call(endpoints(*dead, policy=RetryPolicy(attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)))
    assert sum(len(d.calls) for d in dead) == 3  # attempts (a re-probe before the third does not count)


def test_retries_happen_only_while_time_remains():
    patient = FakeClient("patient", [full()] * 1000)
    with pytest.raises(OverloadedError):
        call(endpoints(patient, policy=RetryPolicy(attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.05)), 0.3)
    # each pause is at least 0.025 s and is taken only if the deadline is further away than that
    assert 2 <= len(patient.calls) <= 1 + 0.3 / 0.025


def test_an_attempt_may_use_all_that_remains_of_the_deadline():
    slow = FakeClient("slow")
    call(endpoints(slow, policy=RetryPolicy()), deadline_s=600.0)
    assert 590 < slow.calls[0]["client_timeout"] <= 600  # no 30 s per-attempt cap
    capped = FakeClient("capped")
    call(endpoints(capped, policy=RetryPolicy(attempt_timeout_s=30)), deadline_s=600.0)
    assert capped.calls[0]["client_timeout"] == 30


def test_concurrency_bounds_the_requests_in_flight_across_calls():
    slow = FakeClient("slow", seconds=0.02)
    pool = endpoints(slow, concurrency=3)

    async def many():
        deadline = time.monotonic() + 10
        await asyncio.gather(*(pool.call(lambda c, **o: c.infer(**o), deadline) for _ in range(12)))

    asyncio.run(many())
    assert len(slow.calls) == 12 and slow.max_in_flight == 3


def busy(seconds: int):
    return InferenceServerException(f"overloaded: 9000 tokens are queued ahead; retry after {seconds} s",
                                    status="StatusCode.UNAVAILABLE")  # fmt: skip


def test_overload_is_retried_no_sooner_than_the_server_says_and_not_past_the_deadline():
    waited = FakeClient("waited", [busy(1)])
    start = time.monotonic()
    assert call(endpoints(waited)) == "waited"
    assert 1.0 <= time.monotonic() - start < 2.0  # the hint, not FAST's 1 ms backoff
    hopeless = FakeClient("hopeless", [busy(30)])
    start = time.monotonic()
    with pytest.raises(OverloadedError) as raised:
        call(endpoints(hopeless), deadline_s=5.0)  # room in 30 s, the caller has 5: the answer at once
    assert raised.value.retry_after_s == 30 and time.monotonic() - start < 1.0 and len(hopeless.calls) == 1
    busy_replica, free_replica = FakeClient("busy", [busy(30)] * 10), FakeClient("free")
    start = time.monotonic()
    assert call(endpoints(busy_replica, free_replica)) == "free"  # another replica may have room now: tried first
    assert time.monotonic() - start < 1.0
