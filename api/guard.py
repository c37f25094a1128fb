"""What every request passes before a route sees it: the API key (`Authorization: Bearer <key>`, compared in
constant time) and the body-size limit, both checked before the body is read. A plain ASGI middleware, so that
nothing is buffered before the checks."""

from __future__ import annotations

import hmac

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from nestrank.api.errors import error_response
from nestrank.protocol.errors import RequestTooLargeError, UnauthenticatedError, ValidationError

# Probes, the scrape, the spec: open to GET (a POST to / is TEI's inference route).
OPEN_PATHS = frozenset({"/health", "/ready", "/ping", "/", "/v1/health/live", "/v1/health/ready", "/metrics", "/docs",
                        "/docs/oauth2-redirect", "/openapi.json"})  # fmt: skip


class Guard:
    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int, retry_after_s: int = 1):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        headers = dict(scope["headers"])  # lower-case byte names, as ASGI servers give them
        refusal = self.refusal(path, headers, scope["method"])
        if refusal is not None:
            return await error_response(path, refusal, self.retry_after_s)(scope, receive, send)
        await self.app(scope, self._counted(receive), send)

    def refusal(self, path: str, headers: dict[bytes, bytes], method: str) -> Exception | None:
        if self.key is not None and not (path in OPEN_PATHS and method in ("GET", "HEAD")):
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
                what = "missing" if b"authorization" not in headers else "wrong"
                return UnauthenticatedError(f"the API key is {what}: send the header Authorization: Bearer <key>")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return ValidationError("Content-Length", "must be a number of bytes")
            if int(length) > self.max_body_bytes:
                return RequestTooLargeError("body", f"{int(length)} bytes exceed the limit of {self.max_body_bytes}")
        return None

    def _counted(self, receive: Receive) -> Receive:
        """A body sent without Content-Length (chunked) is counted as it arrives."""
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    # An HTTPException: FastAPI passes it on from its body reading (anything else would be a 400).
                    raise HTTPException(413, f"more than {self.max_body_bytes} bytes (the limit)")
            return message

        return counted
