"""Synchronous clients as thin wrappers over the asyncio ones: each runs its async client on a private event loop
in a background thread, so the sync and async forms have the same features by construction."""

from __future__ import annotations

import asyncio
import functools
import threading


class SyncClient:
    """Holds an async client; its gRPC channels are made on first use, inside the wrapper's loop."""

    def __init__(self, async_type, *args, **kwargs):
        self._client = async_type(*args, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nestrank-client", daemon=True)
        self._thread.start()

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

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
