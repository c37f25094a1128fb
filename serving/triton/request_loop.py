"""The rerank model's request loop: one asyncio loop on a thread of its own, for the requests an instance works on
at once (serving/triton/rerank.py). It makes their BLS requests and reads their answers (bls.py), sends their
answers, and every WATCH_S looks whether each one is still worth its work: a caller that gave up (Triton's
`is_cancelled`: a cancellation, or a gRPC deadline that passed) abandons its request, which stops at its next wait
(bls.RequestCalls) and cancels what it left queued in the sub-models."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from nestrank.protocol.errors import UnavailableError

WATCH_S = 0.25  # how often the loop asks Triton about callers (and /proc about sub-model processes)


class Abandoned:
    """Why a request stopped being worth its work (set once, from the loop; read by its worker thread)."""

    def __init__(self):
        self.reason: Exception | None = None

    def set(self, reason: Exception) -> None:
        if self.reason is None:
            self.reason = reason


@dataclass(eq=False)
class InFlight:
    """A request being worked on: how to ask whether its caller gave up, how to answer it, and whether it was
    abandoned."""

    request: object
    sender: object
    abandoned: Abandoned = field(default_factory=lambda: Abandoned())


class RequestLoop:
    """An asyncio loop on a daemon thread of its own, for the requests in flight (see the module's docstring)."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"nestrank-{name}-loop", daemon=True)
        self.thread.start()
        self.watcher: concurrent.futures.Future | None = None  # `watch`'s task

    def submit(self, coroutine: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def drain(self, in_flight: set[InFlight], reason: Exception, timeout_s: float = 10.0) -> None:
        """From another thread (finalize): abandons every request in flight with `reason`, and waits until they
        have been answered (their workers stop at their next wait), for at most `timeout_s`."""

        async def draining():
            for flight in list(in_flight):
                flight.abandoned.set(reason)
            waited = 0.0
            while in_flight and waited < timeout_s:
                await asyncio.sleep(0.05)
                waited += 0.05

        try:
            self.submit(draining()).result(timeout_s + 1)
        except Exception:  # noqa: BLE001 - unloading goes on
            pass

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def watch(self, in_flight: set[InFlight], also: Callable[[], None], log: Callable[[str], None]) -> None:
        """Every WATCH_S, on the loop: `also()` (the sub-model processes), then each request in `in_flight` (a set
        the loop's thread alone touches) whose caller gave up is abandoned."""

        async def watching():
            while True:
                await asyncio.sleep(WATCH_S)
                try:
                    also()
                except Exception as err:  # noqa: BLE001 - the watch goes on
                    log(f"watching the sub-models failed: {err!r}")
                for flight in list(in_flight):
                    try:
                        gave_up = flight.abandoned.reason is None and flight.request.is_cancelled()
                    except Exception:  # noqa: BLE001 - Triton no longer knows the request: nobody waits for it
                        gave_up = True
                    if gave_up:
                        flight.abandoned.set(UnavailableError("cancelled by the caller"))

        self.watcher = self.submit(watching())


async def in_daemon_thread(fn: Callable[[], object]) -> object:
    """`fn()` on a daemon thread of its own, awaited on the running loop."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting coroutine
            result, error = None, err
        loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=run, name="nestrank-bls", daemon=True).start()
    return await future


def _settle(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
