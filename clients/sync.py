"""Synchronous clients as thin wrappers over the asyncio ones: each runs its async client on a private event loop
in a background thread, so the sync and async forms have the same features by construction.

- Any thread may call, and any thread may `close()`, as often as it likes: closing fails the calls still running
  with ClientClosedError, and returns within a few seconds whatever the loop is doing.
- A client that is dropped without `close()` is closed when it is garbage-collected (or at exit).
- Ctrl-C (or any exception) in the waiting thread cancels the call, and with it its requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import weakref

from nestrank.protocol.errors import ClientClosedError

CLOSE_TIMEOUT_S = 5.0  # for the async client's close() on the loop; the channels then go with the loop
SIGNAL_CHECK_S = 0.1  # how often a waiting call looks for Ctrl-C


class _LoopThread:
    """A private event loop on a daemon thread, running an async client's coroutines. Holds no reference to the
    SyncClient, so that it can be the SyncClient's finalizer."""

    def __init__(self, client):
        self.client = client
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="nestrank-client", daemon=True)
        self.lock = threading.Lock()
        self.closed = False
        self.waiting: set[concurrent.futures.Future] = set()
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def run(self, coroutine):
        with self.lock:
            if self.closed:
                coroutine.close()
                raise ClientClosedError("the client is closed")
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
            self.waiting.add(future)
        try:
            while not future.done():
                # A bounded wait: Ctrl-C gets through even when the signal lands on another thread.
                concurrent.futures.wait((future,), timeout=SIGNAL_CHECK_S)
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C in this thread: cancel the call on the loop (a no-op once it has finished)
            raise
        finally:
            self.waiting.discard(future)

    async def _shutdown(self) -> None:
        try:
            try:
                await asyncio.wait_for(self.client.close(), CLOSE_TIMEOUT_S)  # fails running calls, closes channels
            except Exception:  # noqa: BLE001 - closing must finish; a channel that would not close goes with the loop
                pass
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:  # calls submitted as close() began: they fail at once
                task.cancel()
            if others:
                await asyncio.wait(others, timeout=CLOSE_TIMEOUT_S)
        finally:
            self.loop.stop()

    def close(self) -> None:
        with self.lock:
            first, self.closed = not self.closed, True
        if first:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        if threading.current_thread() is self.thread:
            return  # the garbage collector ran the finalizer on the loop's own thread: it must not wait for itself
        self.thread.join(2 * CLOSE_TIMEOUT_S + 1)  # every closer returns once the loop has gone
        for future in list(self.waiting):  # a call the loop never finished: fail it rather than wait for ever
            try:
                future.set_exception(ClientClosedError("the client was closed during the call"))
            except concurrent.futures.InvalidStateError:
                pass  # it finished after all


class SyncClient:
    """Holds an async client; its gRPC channels are made on first use, inside the wrapper's loop."""

    def __init__(self, async_type, *args, **kwargs):
        self._client = async_type(*args, **kwargs)  # bad arguments fail here, before a thread exists
        self._runner = _LoopThread(self._client)
        self._finalizer = weakref.finalize(self, self._runner.close)

    @property
    def closed(self) -> bool:
        return self._runner.closed

    def _run(self, coroutine):
        return self._runner.run(coroutine)

    def close(self) -> None:
        """Idempotent and thread-safe; calls still running fail with ClientClosedError."""
        self._runner.close()
        self._finalizer.detach()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def blocking(method):
    """`method` of the async client, run to completion on the wrapper's loop (same signature and docstring)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self._run(method(self._client, *args, **kwargs))

    return call
