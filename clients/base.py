"""What every async client shares: endpoints and credentials, one deadline per call, the model's typed
description (`info()`, read once from its Triton config), and closing.

A public method is one *call*: it gets one deadline (`timeout_s` from its start), every request it sends shares
it, and when the call gives up (an error, the deadline, `close()`, or its caller cancelling it) every request it
started is cancelled, down to its gRPC call, which reaches the server as a cancellation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from nestrank.clients.transport import DEFAULT_URL, AsyncEndpoints, Credentials, RetryPolicy
from nestrank.protocol.errors import ClientClosedError, DeadlineExceededError, ValidationError
from nestrank.protocol.parameters import ModelInfo

C = TypeVar("C")
T = TypeVar("T")


async def gather_all(coroutines: Iterable[Awaitable[T]]) -> list[T]:
    """Results in order. The first failure (or a cancellation) cancels the others, and waits until they have
    stopped, before it is raised: nothing a failed call started goes on sending."""
    tasks: list[asyncio.Task] = []

    async def first_failure_cancels_the_rest(coroutine: Awaitable[T]) -> T:
        try:
            return await coroutine
        except BaseException:
            # Right away, in this step: a sibling woken by the slot this one just freed must not send.
            for task in tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            raise

    tasks += [asyncio.ensure_future(first_failure_cancels_the_rest(c)) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # until each has stopped, its gRPC call cancelled
        raise


def check_count(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValidationError(name, f"must be an integer >= {low}, got {value!r:.40}")
    return value


class AsyncModelClient(Generic[C]):
    """`url` may be a list of endpoints: requests rotate over them and fail over. `timeout_s` is each call's
    deadline, its retries included; `concurrency` bounds the requests this client has in flight at once, whatever
    the number of calls; `api_key` (default: $NESTRANK_API_KEY) and `tls` (ssl=True, root_certificates=,
    private_key=, certificate_chain=: PEM files) as the server needs."""

    config_type: type[C]
    default_model: str
    default_timeout_s: float = 300.0  # a 3,000-text embed through two replicas took 112 s on 2 CPU cores

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        model: str | None = None,
        *,
        timeout_s: float | None = None,
        retry: RetryPolicy = RetryPolicy(),
        concurrency: int = 4,
        api_key: str | None = None,
        **tls,
    ):
        self.model = model or self.default_model
        if not isinstance(self.model, str):
            raise ValidationError("model", f"expected a model name, got {self.model!r:.40}")
        self.timeout_s = self.default_timeout_s if timeout_s is None else timeout_s
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ValidationError("timeout_s", f"must be a number of seconds > 0, got {timeout_s!r:.40}")
        self.concurrency = check_count("concurrency", concurrency)
        self._endpoints = AsyncEndpoints(url, retry, Credentials.from_env(api_key, **tls), self.concurrency)
        self._info: ModelInfo[C] | None = None
        self._running: set[asyncio.Task] = set()  # the calls in flight, on whatever loop: close() cancels them
        self._running_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._endpoints.closed

    async def _call(self, work: Callable[[float], Awaitable[T]]) -> T:
        """`work(deadline)` as one call: bounded by the deadline, cancelled whole by close()."""
        if self.closed:
            raise ClientClosedError("the client is closed")
        deadline = time.monotonic() + self.timeout_s
        task = asyncio.ensure_future(work(deadline))
        with self._running_lock:
            self._running.add(task)
        try:
            return await asyncio.wait_for(task, self.timeout_s)
        except DeadlineExceededError:
            raise
        except asyncio.TimeoutError:
            raise DeadlineExceededError(f"the call did not finish within timeout_s={self.timeout_s:g} s") from None
        except asyncio.CancelledError:
            if self.closed and task.cancelled():
                raise ClientClosedError("the client was closed during the call") from None
            raise
        finally:
            with self._running_lock:
                self._running.discard(task)

    async def _infer(self, model: str, inputs: list, outputs: list, parameters: dict, deadline: float):
        return await self._endpoints.call(
            lambda ep, **o: ep.infer(model, inputs, outputs=outputs, parameters=parameters, **o), deadline
        )

    async def _model_info(self, deadline: float) -> ModelInfo[C]:
        if self._info is None:
            config = await self._endpoints.call(
                lambda ep, **o: ep.get_model_config(self.model, as_json=True, **o), deadline
            )
            self._info = ModelInfo.read(config, self.config_type)
        return self._info

    async def info(self) -> ModelInfo[C]:
        """The served model's description: its config's fields read through (`info().config` has them all) and
        its batch limit."""
        return await self._call(self._model_info)

    async def close(self) -> None:
        """Idempotent. Calls still running fail with ClientClosedError; channels are closed."""
        self._endpoints.closed = True
        current = asyncio.get_running_loop()
        with self._running_lock:
            running = list(self._running)
        here = [task for task in running if task.get_loop() is current]
        for task in running:
            if task.get_loop() is current:
                task.cancel()
            elif not task.get_loop().is_closed():
                task.get_loop().call_soon_threadsafe(task.cancel)
        await asyncio.gather(*here, return_exceptions=True)
        await self._endpoints.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
