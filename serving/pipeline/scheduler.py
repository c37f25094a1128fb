"""Admission and token-budgeted executions, as TEI schedules, for every model that does work of its own: the embed
model, and the reranker's `_encode` and `_score`. Requests join one queue the moment Triton hands them over; a
worker takes them in arrival order into executions of at most `max_batch_tokens` tokens (whole requests; a request
larger than the budget runs alone); a request that would wait longer than `max_wait_s` is refused at once, from the
queued tokens and the measured tokens/s, instead of timing out later. The estimate can be wrong (the machine slows
down, texts are longer than their length suggests): a request that reaches the worker after waiting past the bound
anyway is refused then, not run, so no answer comes later than the bound and one execution. A request whose caller
gave up (cancelled, its deadline passed) is skipped.

Parts of one request (the rerank model's encode chunks, sent at once so that they share executions) carry the
same `group`: each part is judged against the work of other requests only, never its own request's (a rerank of
100 new passages is four chunks of 32, and its fourth must not be refused for the three ahead of it: they are the
same request); once a part has started, the rest are not refused for having waited behind it. At most
`max_group_parts` parts share a group (one `max_candidates` request: `_encode` is reachable from outside, and a
group id buys no more than one request's worth of work); past it, a part is judged against everything ahead.

"Tokens" are each model's own unit of work: text tokens (embed), passage tokens (`_encode`), candidates × pooled
length (`_score`); the speed is measured in the same unit at load and updated after every execution.

Triton's own dynamic batcher can only count requests and texts, so 16 requests of 32 long texts merged into one
27 s execution left the next ones to time out in its queue; here an execution stays within its token budget and
the wait a request is told about is the work ahead of it.

Depth (a model exported with a ladder): requests of every depth share one queue and one execution; the execution
(Embedder.run) groups their texts by depth inside each length bucket, running the first segment for all of them and
only the deeper texts through the later segments, so mixed-depth traffic keeps its batching. Token counts here are
the texts' tokens at any depth (an upper bound on a shallow request's work).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nestrank.protocol.errors import OverloadedError, UnavailableError, retry_hint


@dataclass
class Admitted:
    """One request in the queue: its work, how to answer it, and how to tell whether its caller gave up."""

    work: object  # what `run` takes, one per request (an EmbedJob, EncodeJob, ScoreJob)
    tokens: int
    answer: Callable[[object], None]  # called once, with the request's result or its error
    cancelled: Callable[[], bool] = lambda: False
    group: str | None = None  # the request this is a part of (see the module's docstring)
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class _Group:
    """Parts of one request that are queued or running, and what was decided for them."""

    parts: int = 0  # admitted so far (never decreases: bounds the parts one decision covers)
    pending: int = 0  # queued or running now
    tokens: int = 0  # theirs, queued or running
    started: bool = False


@dataclass
class SchedulerStats:
    admitted: int = 0
    shed: int = 0  # refused at once: the wait would pass the bound
    expired: int = 0  # admitted, but waited past the bound all the same: refused when the worker reached them
    cancelled: int = 0  # given up by their callers before they ran
    batches: int = 0
    tokens: int = 0
    queue_seconds: list[float] = field(default_factory=list)  # per request, drained by the metrics
    batch_seconds: list[float] = field(default_factory=list)


class TokenBudgetScheduler:
    SMOOTHING = 0.3  # weight of the newest execution in the tokens/s estimate

    def __init__(self, run: Callable[[Sequence[object]], Sequence[object]], max_batch_tokens: int, max_wait_s: float,
                 tokens_per_s: float, result: Callable[[object], object] = lambda work: work,
                 name: str = "embed", max_group_parts: int = 1):  # fmt: skip
        """`run` executes a list of works and returns them with results; `result(work)` reads one work's answer;
        `tokens_per_s` is the first estimate of the speed (measured at load), updated after every execution."""
        if max_batch_tokens < 1 or max_wait_s <= 0 or tokens_per_s <= 0:
            raise ValueError("max_batch_tokens >= 1, max_wait_s > 0 and tokens_per_s > 0")
        self.run = run
        self.result = result
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.tokens_per_s = tokens_per_s
        self.max_group_parts = max_group_parts
        self.stats = SchedulerStats()
        self._groups: dict[str, _Group] = {}
        self._queue: deque[Admitted] = deque()
        self._queued_tokens = 0
        self._running_tokens = 0
        self._stopping = False
        self._wake = threading.Condition()
        self._worker = threading.Thread(target=self._loop, name=f"nestrank-{name}-scheduler", daemon=True)
        self._worker.start()

    def submit(self, request: Admitted) -> None:
        """Queues the request, or answers it at once with OverloadedError when it would wait past the bound (an
        idle server takes any request, however large; a part of a group is judged against other requests' work)."""
        with self._wake:
            group = self._groups.get(request.group) if request.group is not None else None
            own = group.tokens if group is not None and group.parts < self.max_group_parts else 0
            ahead = self._queued_tokens + self._running_tokens - own  # other requests' work
            wait_s = (ahead + request.tokens) / self.tokens_per_s
            if self._stopping:
                refusal = UnavailableError("the model is shutting down; retry on another replica")
            elif ahead and wait_s > self.max_wait_s:
                self.stats.shed += 1
                seconds, rate = ahead / self.tokens_per_s, self.tokens_per_s
                refusal = OverloadedError(f"{ahead} tokens are queued ahead (≈ {seconds:.0f} s at "
                                          f"{rate:.0f} tokens/s), past the {self.max_wait_s:g} s bound; "
                                          f"{retry_hint(wait_s - self.max_wait_s)}")  # fmt: skip
            else:
                self._queue.append(request)
                self._queued_tokens += request.tokens
                self.stats.admitted += 1
                if request.group is not None:
                    group = self._groups.setdefault(request.group, _Group())
                    group.parts += 1
                    group.pending += 1
                    group.tokens += request.tokens
                self._wake.notify()
                return
        request.answer(refusal)

    def _done(self, request: Admitted) -> None:
        """A part left the queue or finished running (under the lock)."""
        group = self._groups.get(request.group) if request.group is not None else None
        if group is not None:
            group.pending, group.tokens = group.pending - 1, group.tokens - request.tokens
            if not group.pending:
                del self._groups[request.group]

    def _next_batch(self) -> list[Admitted] | None:
        with self._wake:
            while not self._queue and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            batch, tokens = [], 0
            while self._queue and (not batch or tokens + self._queue[0].tokens <= self.max_batch_tokens):
                request = self._queue.popleft()
                batch.append(request)
                tokens += request.tokens
            self._queued_tokens -= tokens
            self._running_tokens = tokens
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._execute(batch)

    def _execute(self, batch: list[Admitted]) -> None:
        live, dropped = [], []
        gave_up = [request.cancelled() for request in batch]  # a call into Triton: outside the lock
        with self._wake:
            for request, cancelled in zip(batch, gave_up):
                waited = time.monotonic() - request.arrived
                group = self._groups.get(request.group) if request.group is not None else None
                if cancelled:  # its caller gave up (gRPC cancellation): not worth the compute
                    self.stats.cancelled += 1
                    dropped.append((request, UnavailableError("cancelled by the caller before it ran")))
                elif waited > self.max_wait_s and not (group and group.started):
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
            request.answer(refusal)
        started = time.monotonic()
        try:
            done = self.run([r.work for r in live]) if live else []
            answers = [self.result(work) for work in done]
        except Exception as err:  # the shared execution failed: every request in it learns (INTERNAL)
            answers = [err] * len(live)
        elapsed = time.monotonic() - started
        tokens = sum(r.tokens for r in live)
        if tokens and elapsed > 0:
            rate = tokens / elapsed
            self.tokens_per_s += self.SMOOTHING * (rate - self.tokens_per_s)
        with self._wake:
            self._running_tokens = 0
            self.stats.batches += 1
            self.stats.tokens += tokens
            self.stats.batch_seconds.append(elapsed)
            for request in live:
                self._done(request)
        for request, answer in zip(live, answers):
            self.stats.queue_seconds.append(started - request.arrived)
            request.answer(answer)

    def stop(self) -> None:
        """Refuses what is still queued (UNAVAILABLE: another replica can take it) and ends the worker."""
        with self._wake:
            self._stopping = True
            pending, self._queue = list(self._queue), deque()
            self._queued_tokens = 0
            self._wake.notify_all()
        for request in pending:
            request.answer(UnavailableError("the model is shutting down; retry on another replica"))
        self._worker.join(timeout=60)
