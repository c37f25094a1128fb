"""Admission and token-budgeted executions, as TEI schedules, for every model that does work of its own: the embed
model, and the reranker's `_encode` and `_score`. Requests join a queue the moment Triton hands them over; one worker
thread takes them into executions of a Stage (serving/pipeline/stages.py) and answers each.

Two traffic classes (nestrank/protocol/parameters.py), each with its own queue:
- Interactive requests go first. An execution takes them in arrival order within `max_batch_tokens` (whole
  requests; a larger one runs alone). One that would wait longer than `max_wait_s` behind other interactive work
  and the execution running now is refused at once (OverloadedError, with a retry hint), from the measured
  tokens/s; one that reaches the worker past the bound anyway (the estimate was hopeful) is refused then, not run.
- Bulk requests (warm, index, encode_passages) run only when no interactive request waits, one part per execution
  (the rerank model sends them in small chunks, one after another), so interactive work waits behind at most one.
  They are not refused for the work ahead of them: they wait until their caller gives up. At most
  `max_bulk_parts` wait at once (a bound on memory for callers from outside; past it, overload with a hint).

Parts of one request (a rerank's encode chunks, sent at once so that they share executions) carry the same `group`:
each part is judged against other requests' work only (the fourth chunk of a rerank of 100 new passages is not
refused for the three ahead of it), and once a part has started, the rest are not refused for having waited behind
it. Only the first `max_group_parts` parts of a group get that (one `max_candidates` request: a group id buys no
more than one request's worth of work); later ones are judged against everything ahead. `cancel(group)` drops a
group's queued parts and refuses its later ones: the rerank model sends it when its caller gives up (Triton 2.51
cannot cancel a BLS request). A request whose own caller gave up (Triton's `is_cancelled`) is skipped when the
worker reaches it.

Nothing wedges the worker: every call out (the caller's `cancelled`, `answer`, the stage itself) is guarded; a
failed shared execution is run again request by request, so that only the request that caused it fails; an
unexpected error answers the execution's requests and the worker goes on. `progress_deadline` is when the running
execution should be over (0 when idle): the launcher restarts a model whose worker passed it (it stopped making
progress), and the metrics carry it there.

"Tokens" are each model's own unit of work: text tokens (embed), passage tokens (`_encode`), prompt tokens ×
candidates + pooled groups (`_score`); the speed is measured in the same unit at load and updated after every
execution.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from nestrank.protocol.errors import BackendError, OverloadedError, UnavailableError, retry_hint
from nestrank.serving.pipeline.stages import Stage

CANCELLED = "cancelled by the caller before it ran"


def _log_to_stderr(message: str) -> None:
    print(f"nestrank: {message}", file=sys.stderr, flush=True)


@dataclass
class Admitted:
    """One request in a queue: its job, how to answer it, and how to tell whether its caller gave up."""

    job: object  # what the stage runs (an EmbedJob, EncodeJob, ScoreJob)
    tokens: int
    answer: Callable[[object], None]  # called once, with the request's result or its error
    cancelled: Callable[[], bool] = lambda: False
    group: str | None = None  # the request this is a part of (see the module's docstring)
    bulk: bool = False
    arrived: float = field(default_factory=time.monotonic)
    answered: bool = False
    settled: bool = False  # it left the queue or finished running (its group's count says so)


@dataclass
class _Group:
    """Parts of one request that are queued or running, and what was decided for them."""

    parts: int = 0  # admitted while the group had parts pending (bounds the parts one decision covers)
    pending: int = 0  # queued or running now
    tokens: int = 0  # theirs, queued or running
    started: bool = False


@dataclass
class SchedulerStats:
    admitted: int = 0
    bulk: int = 0  # of them, bulk
    shed: int = 0  # refused at once: the wait would pass the bound (or too many bulk parts wait)
    expired: int = 0  # admitted, but waited past the bound all the same: refused when the worker reached them
    cancelled: int = 0  # given up by their callers before they ran
    isolated: int = 0  # shared executions that failed and were run again request by request
    answer_failures: int = 0  # answers that could not be sent (the caller went away): logged, the worker goes on
    batches: int = 0
    tokens: int = 0
    queue_seconds: list[float] = field(default_factory=list)  # per request, drained by the metrics
    batch_seconds: list[float] = field(default_factory=list)


class TokenBudgetScheduler:
    SMOOTHING = 0.3  # weight of the newest execution in the tokens/s estimate
    STALL_FACTOR, STALL_GRACE_S = 4.0, 30.0  # an execution that takes this long past its estimate has stalled
    REMEMBERED_CANCELS = 4096  # cancelled groups kept, to refuse parts that arrive after their cancel

    def __init__(self, stage: Stage, max_batch_tokens: int, max_wait_s: float, tokens_per_s: float,
                 name: str = "embed", max_group_parts: int = 1, max_bulk_parts: int = 256,
                 log: Callable[[str], None] = _log_to_stderr,
                 on_progress: Callable[[], None] = lambda: None, batch_delay_s: float = 0.0):  # fmt: skip
        """`tokens_per_s` is the first estimate of the speed (measured at load), updated after every execution;
        `on_progress` (the metrics) is called through `progress`: by the worker when it starts and ends an
        execution, and by the glue after it queued requests; `batch_delay_s`:
        how long a busy scheduler waits for more requests to join an execution (0: never)."""
        if max_batch_tokens < 1 or max_wait_s <= 0 or tokens_per_s <= 0 or max_bulk_parts < 1:
            raise ValueError("max_batch_tokens >= 1, max_wait_s > 0, tokens_per_s > 0 and max_bulk_parts >= 1")
        self.stage = stage
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.tokens_per_s = tokens_per_s
        self.max_group_parts = max_group_parts
        self.max_bulk_parts = max_bulk_parts
        self.log = log
        self.on_progress = on_progress
        self.batch_delay_s = batch_delay_s
        self._last_end = float("-inf")  # time.monotonic() when the last execution ended
        self.stats = SchedulerStats()
        self.progress_deadline = 0.0  # time.time() by which the running execution should be over; 0: idle
        self._groups: dict[str, _Group] = {}
        self._cancelled_groups: OrderedDict[str, None] = OrderedDict()
        self._queues: dict[bool, deque[Admitted]] = {False: deque(), True: deque()}  # by `bulk`
        self._queued_tokens = {False: 0, True: 0}
        self._running_tokens = 0
        self._stopping = False
        self._wake = threading.Condition()
        self._worker = threading.Thread(target=self._loop, name=f"nestrank-{name}-scheduler", daemon=True)
        self._worker.start()

    # -- taking requests in (Triton's thread) ---------------------------------------------------------------------

    def submit(self, request: Admitted) -> None:
        """Queues the request, or answers it at once: OverloadedError when an interactive one would wait past the
        bound (an idle server takes any request, however large), UnavailableError when its group was cancelled."""
        with self._wake:
            refusal = self._refusal(request)
            if refusal is None:
                self._queues[request.bulk].append(request)
                self._queued_tokens[request.bulk] += request.tokens
                self.stats.admitted += 1
                self.stats.bulk += request.bulk
                if request.group is not None:
                    group = self._groups.setdefault(request.group, _Group())
                    group.parts += 1
                    group.pending += 1
                    group.tokens += request.tokens
                self._wake.notify()
                return
        self._reply(request, refusal)

    def _refusal(self, request: Admitted) -> Exception | None:
        """Why the request cannot be queued (under the lock), or None."""
        if self._stopping:
            return UnavailableError("the model is shutting down; retry on another replica")
        if request.group is not None and request.group in self._cancelled_groups:
            return UnavailableError(CANCELLED)
        if request.bulk:
            if len(self._queues[True]) < self.max_bulk_parts:
                return None
            self.stats.shed += 1
            wait_s = self._queued_tokens[True] / self.tokens_per_s
            return OverloadedError(f"{self.max_bulk_parts} bulk requests wait already; {retry_hint(wait_s)}")
        group = self._groups.get(request.group) if request.group is not None else None
        own = group.tokens if group is not None and group.parts < self.max_group_parts else 0
        ahead = self._queued_tokens[False] + self._running_tokens - own  # other requests' interactive work
        wait_s = (ahead + request.tokens) / self.tokens_per_s
        if not ahead or wait_s <= self.max_wait_s:
            return None
        self.stats.shed += 1
        seconds, rate = ahead / self.tokens_per_s, self.tokens_per_s
        return OverloadedError(f"{ahead} tokens are queued ahead (≈ {seconds:.0f} s at {rate:.0f} tokens/s), past "
                               f"the {self.max_wait_s:g} s bound; {retry_hint(wait_s - self.max_wait_s)}")  # fmt: skip

    def cancel(self, group: str) -> int:
        """Drops the group's queued parts (answered UNAVAILABLE: their caller is gone) and refuses its later ones;
        the parts running now finish. How many were dropped."""
        with self._wake:
            self._cancelled_groups[group] = None
            self._cancelled_groups.move_to_end(group)
            while len(self._cancelled_groups) > self.REMEMBERED_CANCELS:
                self._cancelled_groups.popitem(last=False)
            dropped = []
            for bulk, queue in self._queues.items():
                kept = deque(r for r in queue if r.group != group)
                dropped += [r for r in queue if r.group == group]
                self._queues[bulk] = kept
            for request in dropped:
                self._queued_tokens[request.bulk] -= request.tokens
                self._done(request)
            self.stats.cancelled += len(dropped)
        for request in dropped:
            self._reply(request, UnavailableError(CANCELLED))
        return len(dropped)

    # -- the worker ---------------------------------------------------------------------------------------------

    def _done(self, request: Admitted) -> None:
        """A part left the queue or finished running (under the lock; once per request)."""
        if request.settled:
            return
        request.settled = True
        group = self._groups.get(request.group) if request.group is not None else None
        if group is not None:
            group.pending, group.tokens = group.pending - 1, group.tokens - request.tokens
            if not group.pending:
                del self._groups[request.group]

    def _next_batch(self) -> list[Admitted] | None:
        """Interactive requests within the budget, else one bulk part (None: stopping)."""
        with self._wake:
            while not (self._queues[False] or self._queues[True] or self._stopping):
                self._wake.wait()
            if self._stopping:
                return None
            self._gather_while_busy()
            interactive = self._queues[False]
            batch, tokens = [], 0
            if interactive:
                while interactive and (not batch or tokens + interactive[0].tokens <= self.max_batch_tokens):
                    batch.append(interactive.popleft())
                    tokens += batch[-1].tokens
            else:
                batch.append(self._queues[True].popleft())
                tokens = batch[0].tokens
            self._queued_tokens[batch[0].bulk] -= tokens
            self._running_tokens = tokens
            self._expect(tokens)
            return batch

    def _expect(self, tokens: int) -> None:
        """Under the lock: the progress deadline of work of `tokens` starting now."""
        self.progress_deadline = time.time() + self.STALL_GRACE_S + self.STALL_FACTOR * tokens / self.tokens_per_s

    def _gather_while_busy(self) -> None:
        """Under the lock: when the last execution ended less than `batch_delay_s` ago (the model is busy) and
        interactive work is queued within the budget, wait up to `batch_delay_s` from its first request's arrival
        for more to join the execution (what Triton's dynamic batcher does with max_queue_delay), so that requests
        of concurrent callers share a run. An idle model starts at once."""
        interactive = self._queues[False]
        if not (self.batch_delay_s and interactive) or time.monotonic() - self._last_end > self.batch_delay_s:
            return
        until = interactive[0].arrived + self.batch_delay_s
        while (self._queued_tokens[False] < self.max_batch_tokens and not self._stopping
               and (left := until - time.monotonic()) > 0):  # fmt: skip
            self._wake.wait(left)

    def _loop(self) -> None:
        while True:
            batch = None
            try:
                batch = self._next_batch()
                if batch is None:
                    return
                self.progress()
                self._execute(batch)
            except BaseException as err:  # noqa: BLE001 - the worker must outlive anything one execution does
                self.log(f"scheduler error (the worker goes on):\n{''.join(traceback.format_exception(err))}")
                for request in batch or ():
                    self._reply(request, BackendError("the model's scheduler failed on this request; the server "
                                                      "log has the details"))  # fmt: skip
                with self._wake:
                    for request in batch or ():
                        self._done(request)
            finally:
                with self._wake:
                    self._running_tokens = 0
                    self.progress_deadline = 0.0
                self.progress()

    def progress(self) -> None:
        try:
            self.on_progress()
        except Exception as err:  # noqa: BLE001 - metrics are not worth a request
            self.log(f"reporting the scheduler's progress failed: {err!r}")

    def _gave_up(self, request: Admitted) -> bool:
        try:
            return bool(request.cancelled())
        except Exception:  # noqa: BLE001 - the request is gone (Triton no longer knows it)
            return True

    def _execute(self, batch: list[Admitted]) -> None:
        gave_up = [self._gave_up(request) for request in batch]  # calls into Triton: outside the lock
        live, dropped = [], []
        with self._wake:
            for request, cancelled in zip(batch, gave_up):
                waited = time.monotonic() - request.arrived
                group = self._groups.get(request.group) if request.group is not None else None
                if cancelled or (request.group is not None and request.group in self._cancelled_groups):
                    self.stats.cancelled += 1
                    dropped.append((request, UnavailableError(CANCELLED)))
                elif not request.bulk and waited > self.max_wait_s and not (group and group.started):
                    # the speed estimate was too hopeful: keep the bound all the same (a part whose request has
                    # started waited behind its own request, not past the bound)
                    self.stats.expired += 1
                    dropped.append((request, OverloadedError(f"waited {waited:.1f} s in the queue, past the "
                                                             f"{self.max_wait_s:g} s bound; retry later")))  # fmt: skip
                else:
                    live.append(request)
                    if group is not None:
                        group.started = True
            self._running_tokens -= sum(request.tokens for request, _ in dropped)
            for request, _ in dropped:
                self._done(request)
        for request, refusal in dropped:
            self._reply(request, refusal)
        started = time.monotonic()
        answers = self._run(live)
        elapsed = time.monotonic() - started
        tokens = sum(r.tokens for r in live)
        if tokens and elapsed > 0 and not any(isinstance(a, Exception) for a in answers):
            # only executions that did all their work measure the speed: a request refused in `core` (a text over
            # the limit, say) counts its tokens without their cost, and would make every later estimate hopeful
            self.tokens_per_s += self.SMOOTHING * (tokens / elapsed - self.tokens_per_s)
        with self._wake:
            self._last_end = time.monotonic()
            self.stats.batches += 1
            self.stats.tokens += tokens
            self.stats.batch_seconds.append(elapsed)
            for request in live:
                self._done(request)
        for request, answer in zip(live, answers):
            self.stats.queue_seconds.append(started - request.arrived)
            self._reply(request, answer)

    def _run(self, live: list[Admitted]) -> list[object]:
        """Each request's answer: the stage's result, or an error. A shared execution that fails is run again
        request by request, so that only the request that caused it fails."""
        if not live:
            return []
        try:
            self.stage.core([request.job for request in live])
        except Exception as err:  # noqa: BLE001 - isolated below
            if len(live) == 1:
                return [err]
            self.stats.isolated += 1
            self.log(f"a shared execution of {len(live)} requests failed ({err!r}); running them one by one")
            with self._wake:  # the reruns are progress too: a deadline of their own
                self._expect(sum(r.tokens for r in live))
            self.progress()
            return [answer for request in live for answer in self._run([request])]
        return [self._finish(request) for request in live]

    def _finish(self, request: Admitted) -> object:
        try:
            return self.stage.post(request.job)
        except Exception as err:  # noqa: BLE001 - this request's own
            return err

    def _reply(self, request: Admitted, answer: object) -> None:
        """The request's one answer; a failure to send it (its caller went away) is logged, never raised."""
        if request.answered:
            return
        request.answered = True
        try:
            request.answer(answer)
        except Exception as err:  # noqa: BLE001 - one caller's problem, not the worker's
            self.stats.answer_failures += 1
            self.log(f"sending an answer failed: {err!r}")

    def stop(self) -> None:
        """Refuses what is still queued (UNAVAILABLE: another replica can take it) and ends the worker."""
        with self._wake:
            self._stopping = True
            pending = [*self._queues[False], *self._queues[True]]
            self._queues = {False: deque(), True: deque()}
            self._queued_tokens = {False: 0, True: 0}
            self._wake.notify_all()
        for request in pending:
            self._reply(request, UnavailableError("the model is shutting down; retry on another replica"))
        self._worker.join(timeout=60)
