"""The scheduler every model runs: arrival order, executions within the token budget, refusal at once when the wait
would pass the bound, cancelled requests skipped, a failed execution failing only the request that caused it;
interactive work ahead of bulk work, cancelled groups, and a worker that nothing a request does can stop."""

import threading
import time

import pytest

from nestrank.protocol.errors import OverloadedError, UnavailableError
from nestrank.serving.pipeline.scheduler import Admitted, TokenBudgetScheduler


class Recorder:
    """A Stage for the scheduler: records each execution, may hold until released, may fail."""

    def __init__(self):
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Semaphore(0)
        self.fail_on: str | None = None

    def core(self, works):
        self.batches.append(list(works))
        self.started.release()
        self.release.wait(10)
        if self.fail_on in works:
            raise RuntimeError("the execution failed")

    def post(self, work):
        return f"done {work}"


def request(name, tokens, answers, cancelled=False, group=None, bulk=False):
    done = threading.Event()

    def answer(result):
        answers[name] = result
        done.set()

    gave_up = cancelled if callable(cancelled) else lambda: cancelled
    return Admitted(name, tokens, answer, gave_up, group, bulk), done


@pytest.fixture
def run():
    return Recorder()


def test_requests_run_in_arrival_order_within_the_token_budget(run):
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=100, max_wait_s=1e6, tokens_per_s=1e6)
    run.release.clear()
    answers, events = {}, []
    first, done = request("first", 10, answers)
    scheduler.submit(first)
    run.started.acquire(timeout=5)  # the worker holds `first`; the rest queue up behind it
    for name, tokens in (("a", 60), ("b", 30), ("c", 20), ("big", 500), ("d", 5)):
        admitted, event = request(name, tokens, answers)
        scheduler.submit(admitted)
        events.append(event)
    run.release.set()
    assert all(e.wait(5) for e in [done, *events])
    assert run.batches == [["first"], ["a", "b"], ["c"], ["big"], ["d"]]  # whole requests; `big` runs alone
    assert answers == {n: f"done {n}" for n in ("first", "a", "b", "c", "big", "d")}
    scheduler.stop()


def test_a_request_that_would_wait_past_the_bound_is_refused_at_once(run):
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=1000, max_wait_s=2.0, tokens_per_s=100.0)
    run.release.clear()
    answers = {}
    for name in ("running", "queued"):  # 100 + 80 tokens ahead: 1.8 s of work at 100 tokens/s
        scheduler.submit(request(name, 100 if name == "running" else 80, answers)[0])
        if name == "running":
            run.started.acquire(timeout=5)
    scheduler.submit(request("fits", 20, answers)[0])  # done in 2.0 s: within the bound
    refused, _ = request("refused", 30, answers)
    scheduler.submit(refused)
    assert isinstance(answers["refused"], OverloadedError)  # answered inside submit: no waiting at all
    assert str(answers["refused"]).startswith("200 tokens are queued ahead") and "past the 2 s bound" in str(
        answers["refused"]
    )
    assert answers["refused"].retry_after_s == 1  # (200 + 30) tokens at 100/s is 0.3 s past the bound: 1 s
    assert "fits" not in answers and scheduler.stats.shed == 1 and scheduler.stats.admitted == 3
    run.release.set()
    scheduler.stop()


def test_a_request_that_waited_past_the_bound_anyway_is_refused_not_run(run):
    """The speed estimate said 1,000,000 tokens/s; the running execution takes longer than the bound."""
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=10, max_wait_s=0.2, tokens_per_s=1e6)
    run.release.clear()
    answers = {}
    scheduler.submit(request("slow", 10, answers)[0])
    run.started.acquire(timeout=5)
    late, late_done = request("late", 10, answers)
    scheduler.submit(late)  # admitted: the estimate says it waits 20 µs
    assert scheduler.stats.admitted == 2 and "late" not in answers
    threading.Event().wait(0.3)  # the running execution outlasts the bound
    run.release.set()
    assert late_done.wait(5)
    assert isinstance(answers["late"], OverloadedError)
    assert str(answers["late"]).startswith("waited 0.") and str(answers["late"]).endswith("past the 0.2 s bound; "
                                                                                           "retry later")  # fmt: skip
    assert run.batches == [["slow"]] and scheduler.stats.expired == 1
    scheduler.stop()


def test_an_idle_server_takes_a_request_larger_than_the_bound(run):
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=10, max_wait_s=0.1, tokens_per_s=1.0)
    answers = {}
    admitted, done = request("huge", 10_000, answers)
    scheduler.submit(admitted)
    assert done.wait(5) and answers["huge"] == "done huge"
    scheduler.stop()


def test_a_cancelled_request_is_not_run(run):
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=100, max_wait_s=1e6, tokens_per_s=1e6)
    run.release.clear()
    answers = {}
    scheduler.submit(request("first", 10, answers)[0])
    run.started.acquire(timeout=5)
    gone, gone_done = request("gone", 10, answers, cancelled=True)
    kept, kept_done = request("kept", 10, answers)
    scheduler.submit(gone)
    scheduler.submit(kept)
    run.release.set()
    assert gone_done.wait(5) and kept_done.wait(5)
    assert isinstance(answers["gone"], UnavailableError) and answers["kept"] == "done kept"
    assert ["gone"] not in run.batches and all("gone" not in b for b in run.batches)
    scheduler.stop()


def test_a_failed_shared_execution_fails_only_the_request_that_caused_it(run):
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=100, max_wait_s=1e6, tokens_per_s=1e6)
    run.release.clear()
    answers, events = {}, []
    scheduler.submit(request("first", 10, answers)[0])
    run.started.acquire(timeout=5)
    run.fail_on = "bad"
    for name in ("good", "bad", "also good"):  # queued behind `first`: one execution of three
        admitted, event = request(name, 10, answers)
        scheduler.submit(admitted)
        events.append(event)
    run.release.set()
    assert all(e.wait(5) for e in events)
    assert isinstance(answers["bad"], RuntimeError) and answers["good"] == "done good"
    assert answers["also good"] == "done also good"
    assert run.batches[1] == ["good", "bad", "also good"] and scheduler.stats.isolated == 1  # then one by one
    scheduler.stop()


def test_interactive_work_goes_first_and_bulk_work_one_part_at_a_time_never_refused(run):
    """Bulk parts queued long past the bound are neither refused nor expired; every interactive request queued
    meanwhile runs before the next bulk part, and is judged against interactive work only."""
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=1000, max_wait_s=1.0, tokens_per_s=100.0)
    run.release.clear()
    answers, events = {}, []
    scheduler.submit(request("bulk 0", 50, answers, bulk=True)[0])
    run.started.acquire(timeout=5)
    for i in range(1, 5):  # 200 tokens of bulk work: 2 s at 100 tokens/s, past the 1 s bound
        admitted, event = request(f"bulk {i}", 50, answers, bulk=True)
        scheduler.submit(admitted)
        events.append(event)
    for name in ("query a", "query b"):  # 50 running + 20 + 20: within the bound, whatever bulk work waits
        admitted, event = request(name, 20, answers)
        scheduler.submit(admitted)
        events.append(event)
    scheduler.submit(request("query c", 30, answers)[0])  # 50 + 40 interactive ahead + 30: past the bound
    assert isinstance(answers["query c"], OverloadedError)
    run.release.set()
    assert all(e.wait(5) for e in events)
    assert run.batches == [["bulk 0"], ["query a", "query b"], ["bulk 1"], ["bulk 2"], ["bulk 3"], ["bulk 4"]]
    assert all(answers[f"bulk {i}"] == f"done bulk {i}" for i in range(5))
    assert scheduler.stats.bulk == 5 and scheduler.stats.expired == 0
    scheduler.stop()


def test_too_many_waiting_bulk_parts_are_refused_with_a_hint():
    stage = Recorder()
    stage.release.clear()
    scheduler = TokenBudgetScheduler(stage, 100, 1.0, 100.0, max_bulk_parts=2)
    answers = {}
    for i in range(4):
        scheduler.submit(request(f"bulk {i}", 100, answers, bulk=True)[0])
        if i == 0:
            stage.started.acquire(timeout=5)
    assert isinstance(answers["bulk 3"], OverloadedError) and answers["bulk 3"].retry_after_s == 2
    assert "2 bulk requests wait already" in str(answers["bulk 3"])
    stage.release.set()
    scheduler.stop()


def test_a_cancelled_group_drops_its_queued_parts_and_refuses_its_later_ones(run):
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=10, max_wait_s=1e6, tokens_per_s=1e6)
    run.release.clear()
    answers = {}
    running, running_done = request("running", 10, answers, group="g")
    scheduler.submit(running)
    run.started.acquire(timeout=5)
    other, other_done = request("other", 10, answers, group="h")
    scheduler.submit(request("queued", 10, answers, group="g")[0])
    scheduler.submit(other)
    assert scheduler.cancel("g") == 1
    assert str(answers["queued"]) == "cancelled by the caller before it ran" and "other" not in answers
    scheduler.submit(request("late", 10, answers, group="g")[0])
    assert isinstance(answers["late"], UnavailableError)
    run.release.set()
    assert running_done.wait(5) and other_done.wait(5)
    assert answers["running"] == "done running" and answers["other"] == "done other"  # running parts finish
    scheduler.stop()


def test_nothing_a_request_does_stops_the_worker(run):
    """An answer that raises (the caller went away), a cancellation check that raises (Triton no longer knows the
    request): that request is dropped, logged, and the next ones are served."""
    logged = []
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=10, max_wait_s=1e6, tokens_per_s=1e6, log=logged.append)
    answers = {}

    def gone(result):
        raise RuntimeError("the response sender is closed")

    def unknown():
        raise RuntimeError("request not found")

    scheduler.submit(Admitted("raising answer", 10, gone))
    scheduler.submit(request("raising check", 10, answers, cancelled=unknown)[0])
    admitted, done = request("next", 10, answers)
    scheduler.submit(admitted)
    assert done.wait(5) and answers["next"] == "done next"
    assert isinstance(answers["raising check"], UnavailableError)  # read as a caller that gave up
    assert scheduler.stats.answer_failures == 1 and any("sending an answer failed" in m for m in logged)
    scheduler.stop()


def test_the_progress_deadline_is_set_while_an_execution_runs(run):
    import time

    reports = []
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=100, max_wait_s=1e6, tokens_per_s=10.0,
                                     on_progress=lambda: reports.append(scheduler.progress_deadline))  # fmt: skip
    run.release.clear()
    answers = {}
    admitted, done = request("slow", 50, answers)  # 5 s expected at 10 tokens/s
    scheduler.submit(admitted)
    run.started.acquire(timeout=5)
    expected = time.time() + scheduler.STALL_GRACE_S + scheduler.STALL_FACTOR * 5
    assert abs(scheduler.progress_deadline - expected) < 2
    run.release.set()
    assert done.wait(5)
    scheduler.stop()
    assert reports[0] > 0 and reports[-1] == 0.0  # reported when it starts and when it ends


def test_stopping_refuses_what_is_queued_as_unavailable(run):
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=10, max_wait_s=1e6, tokens_per_s=1e6)
    run.release.clear()
    answers = {}
    scheduler.submit(request("running", 10, answers)[0])
    run.started.acquire(timeout=5)
    scheduler.submit(request("queued", 10, answers)[0])
    threading.Timer(0.2, run.release.set).start()
    scheduler.stop()
    assert isinstance(answers["queued"], UnavailableError)
    scheduler.submit(request("late", 10, answers)[0])
    assert isinstance(answers["late"], UnavailableError)


def test_the_speed_estimate_follows_what_executions_take_when_they_do_their_work():
    stage = Recorder()
    stage.core = lambda works: time.sleep(0.2)
    scheduler = TokenBudgetScheduler(stage, max_batch_tokens=10_000, max_wait_s=1e6, tokens_per_s=1e9)
    answers = {}
    for i in range(3):
        admitted, done = request(f"r{i}", 100, answers)
        scheduler.submit(admitted)
        done.wait(5)
    assert scheduler.tokens_per_s < 1e9 * 0.5  # 100 tokens in 0.2 s pulls the estimate far down from 1e9
    measured = scheduler.tokens_per_s

    def refused(works):
        raise ValueError("text[0]: 5000000 characters exceed the limit")  # fails at once, its tokens not worked

    stage.core = refused
    admitted, done = request("refused", 100_000, answers)
    scheduler.submit(admitted)
    assert done.wait(5) and isinstance(answers["refused"], ValueError)
    assert scheduler.tokens_per_s == measured  # a failure says nothing about the speed
    scheduler.stop()


def test_the_parts_of_one_request_are_admitted_as_one(run):
    """A rerank's encode chunks: 4 parts of 100 tokens at 100 tokens/s with a 2 s bound. Alone, the fourth would
    be refused for the three ahead of it; as one group, only other requests' work counts, and a part that waited
    behind its own request's running parts past the bound still runs."""
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=100, max_wait_s=0.5, tokens_per_s=100.0,
                                     max_group_parts=4)  # fmt: skip
    run.release.clear()
    answers, events = {}, []
    for i in range(4):
        admitted, event = request(f"part{i}", 100, answers, group="rerank-1")
        scheduler.submit(admitted)
        events.append(event)
        if i == 0:
            run.started.acquire(timeout=5)
    other, _ = request("other", 10, answers, group="rerank-2")  # 400 tokens of rerank-1 ahead: 4 s
    scheduler.submit(other)
    assert isinstance(answers.pop("other"), OverloadedError)
    threading.Event().wait(0.6)  # the running part outlasts the bound: the queued ones have waited past it
    run.release.set()
    assert all(e.wait(5) for e in events)
    assert answers == {f"part{i}": f"done part{i}" for i in range(4)}
    assert scheduler.stats.admitted == 4 and scheduler.stats.shed == 1 and scheduler.stats.expired == 0
    scheduler.stop()


def test_each_part_is_judged_against_other_requests_and_a_group_covers_only_so_many(run):
    """A group id buys no way around admission: every part is checked against the other requests' work (a tiny
    first part does not carry a huge second one in), and past max_group_parts a part counts its own group too."""
    scheduler = TokenBudgetScheduler(run, max_batch_tokens=100, max_wait_s=1.0, tokens_per_s=100.0,
                                     max_group_parts=2)  # fmt: skip
    run.release.clear()
    answers = {}
    scheduler.submit(request("busy", 50, answers)[0])
    run.started.acquire(timeout=5)
    scheduler.submit(request("a0", 1, answers, group="a")[0])  # 50 ahead + 1: 0.51 s
    scheduler.submit(request("a1", 60, answers, group="a")[0])  # 50 of others ahead + 60: 1.1 s, past the bound
    assert isinstance(answers["a1"], OverloadedError) and "a0" not in answers
    scheduler.submit(request("a2", 40, answers, group="a")[0])  # 50 + 40 (a0 is its own request's): 0.9 s
    assert "a2" not in answers
    scheduler.submit(request("a3", 20, answers, group="a")[0])  # a third part: it counts a0 and a2 too (1.11 s)
    assert isinstance(answers["a3"], OverloadedError) and str(answers["a3"]).startswith("91 tokens are queued")
    run.release.set()
    scheduler.stop()


def test_a_busy_scheduler_waits_a_moment_for_concurrent_requests_and_an_idle_one_does_not():
    stage = Recorder()
    scheduler = TokenBudgetScheduler(stage, max_batch_tokens=1000, max_wait_s=1e6, tokens_per_s=1e6,
                                     batch_delay_s=0.05)  # fmt: skip
    answers = {}
    started = time.monotonic()
    admitted, done = request("alone", 10, answers)
    scheduler.submit(admitted)
    assert done.wait(5) and time.monotonic() - started < 0.04  # idle: at once
    events = []
    for name in ("a", "b", "c"):  # just after an execution ended: busy, so they gather
        admitted, event = request(name, 10, answers)
        scheduler.submit(admitted)
        events.append(event)
        time.sleep(0.01)
    assert all(e.wait(5) for e in events)
    assert stage.batches[1:] == [["a", "b", "c"]]
    scheduler.stop()
