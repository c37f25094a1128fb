"""Supervision: a watchdog thread that restarts a dead tritonserver with backoff and reloads a model whose Python
backend stub died (Triton itself would keep such a model "ready" and answer INTERNAL), or whose scheduler stopped
making progress (its stubs are killed first; the model is not ready while it reloads, so balancers and clients
go elsewhere)."""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Protocol


class EventLog:
    """What happened, for operators (stderr) and tests: the latest `maxlen` events, readable from any thread."""

    def __init__(self, maxlen: int = 256, echo: bool = True):
        self._events = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._echo = echo

    def add(self, what: str) -> None:
        with self._lock:
            self._events.append((time.monotonic(), what))
        if self._echo:
            print(f"nestrank: {what}", file=sys.stderr, flush=True)

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._events)

    def __iter__(self):
        return iter(self.snapshot())

    def __len__(self) -> int:
        return len(self.snapshot())


class Supervised(Protocol):
    """What the watchdog needs from a server (TritonServer)."""

    stopping: threading.Event
    events: EventLog

    def exit_code(self) -> int | None: ...
    def clean_up_dead(self) -> None: ...
    def restart(self) -> bool: ...
    def stub_counts(self) -> collections.Counter: ...
    def reload(self, model: str) -> None: ...
    def stalled(self) -> list[str]: ...
    def kill_stubs(self, model: str) -> None: ...
    def narrow_regions(self) -> None: ...


RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
RESTART_STABLE_S = 60.0  # up this long, and the next crash backs off from the first step again


class Backoff:
    """The pauses before restarts, for tritonserver and its companions alike: along `steps_s` for crashes in a row;
    a process that stayed up for `stable_s` starts from the first step again."""

    def __init__(self, steps_s=RESTART_BACKOFF_S, stable_s: float = RESTART_STABLE_S):
        self.steps_s, self.stable_s, self.crashes = tuple(steps_s), stable_s, 0

    def pause_after(self, up_s: float | None) -> float:
        """The pause before the next restart, for a crash after `up_s` seconds up (None: it never came up)."""
        if up_s is not None and up_s >= self.stable_s:
            self.crashes = 0
        pause = self.steps_s[min(self.crashes, len(self.steps_s) - 1)]
        self.crashes += 1
        return pause


class Supervisor:
    """Runs the watchdog thread. Crashes in a row back off along `backoff_s`; once a server has stayed up for
    `stable_s`, the next crash starts the backoff again from its first step."""

    def __init__(self, server: Supervised, backoff_s=RESTART_BACKOFF_S, stable_s: float = RESTART_STABLE_S,
                 poll_s: float = 0.5, progress_every_s: float = 5.0):  # fmt: skip
        self.server = server
        self.backoff = Backoff(backoff_s, stable_s)
        self.poll_s = poll_s
        self.progress_every_s = progress_every_s  # how often `stalled()` looks (it reads the metrics endpoint)
        self._thread = threading.Thread(target=self._run, name="nestrank-watchdog", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        server = self.server
        expected = server.stub_counts()
        ready_at = time.monotonic()  # None while a restart has not become ready
        progress_read_at = time.monotonic()
        while not server.stopping.wait(self.poll_s):
            code = server.exit_code()
            if code is None:
                server.narrow_regions()
                if time.monotonic() - progress_read_at >= self.progress_every_s:
                    progress_read_at = time.monotonic()
                    try:
                        for model in server.stalled():
                            server.kill_stubs(model)
                    except Exception as err:  # noqa: BLE001 - the watchdog outlives a bad look (a dying server)
                        server.events.add(f"looking for stalled models failed: {err!r}")
                running = server.stub_counts()
                for model, count in expected.items():
                    if running[model] < count and not server.stopping.is_set():
                        server.reload(model)
                continue
            server.clean_up_dead()
            pause = self.backoff.pause_after(None if ready_at is None else time.monotonic() - ready_at)
            server.events.add(f"tritonserver exited with code {code}; restarting in {pause:g} s")
            if server.stopping.wait(pause):
                return
            ready_at = None
            if server.restart():
                ready_at = time.monotonic()
                expected = server.stub_counts()
                server.events.add("tritonserver restarted and ready")
