"""A request whose caller disconnects before its answer is cancelled: the route's task, and with it the gRPC calls it
started (a cancelled client call cancels what it started), which Triton hands on to the models as cancellations
(the rerank model drops its queued sub-requests). Without this, a caller that gave up at its own timeout would keep
the cores busy until the front's deadline.

A plain ASGI middleware inside the guard (which has bounded the body): it reads the body, hands it to the route,
and meanwhile waits for the connection's `http.disconnect`."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nestrank.api.errors import error_response
from nestrank.protocol.errors import RequestTooLargeError


class CancelledWhenTheCallerLeaves:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body: list[Message] = []
        while not body or body[-1].get("more_body", False):
            try:
                message = await receive()
            except HTTPException as refused:  # the guard counting a streamed body past the limit
                return await error_response(scope["path"], RequestTooLargeError("body", refused.detail))(
                    scope, receive, send
                )
            if message["type"] == "http.disconnect":
                return  # gone before it finished sending
            body.append(message)
        left = asyncio.Event()

        async def replayed() -> Message:
            if body:
                return body.pop(0)
            await left.wait()
            return {"type": "http.disconnect"}

        route = asyncio.ensure_future(self.app(scope, replayed, send))

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            left.set()
            route.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await route
        except asyncio.CancelledError:
            if not left.is_set():
                raise  # the server's own cancellation, not the caller's
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
