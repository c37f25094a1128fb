"""Error responses, rendered from the protocol's one error table (nestrank/protocol/errors.py, WIRE): the status is the
kind's HTTP column, the body the envelope of the API family the path belongs to: OpenAI's `{"error": {"message",
"type", "param", "code"}}` on /v1 and /v2 (and the front's own routes), with the kind's OpenAI type and code; TEI's
`{"error", "error_type"}` on TEI's routes, with its TEI type and TEI's status for it (413 for a bad request, 424 for
what the model cannot do). No mapping of its own keyed by status: a passage id's 404 (`not_found`) and a model's 404
(`model_not_found`) differ because their kinds do. Nothing a caller sends answers 500: a 500 is a bug of the front
(logged with its traceback) or a model's failure (BackendError)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from nestrank.protocol.errors import (
    WIRE,
    BackendError,
    ModelNotFoundError,
    NestrankError,
    OverloadedError,
    RequestTooLargeError,
    ValidationError,
    Wire,
    wire,
)

log = logging.getLogger("nestrank.api")
# TEI's routes answer in TEI's envelope, with TEI's statuses (its /embeddings is the OpenAI route, in OpenAI's).
TEI_PATHS = frozenset({"/", "/embed", "/embed_all", "/embed_sparse", "/predict", "/rerank", "/similarity",
                       "/tokenize", "/decode", "/invocations", "/info", "/health", "/ping"})  # fmt: skip
MAX_MESSAGE_CHARS = 1000  # never a request's bulk back
RETRY_STATUSES = (429, 503)  # HTTP's own rule: these carry Retry-After


def error_body(path: str, row: Wire, message: str, param: str | None = None) -> dict:
    message = message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"
    if path in TEI_PATHS:
        return {"error": message, "error_type": row.tei}
    return {"error": {"message": message, "type": row.openai_type, "param": param, "code": row.openai_code}}


def error_headers(status: int, retry_after_s: int) -> dict[str, str]:
    headers = {"Retry-After": str(retry_after_s)} if status in RETRY_STATUSES else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def error_response(path: str, err: BaseException, retry_after_s: int = 1) -> JSONResponse:
    if not isinstance(err, NestrankError) or isinstance(err, BackendError):
        log.error("%s failed", path, exc_info=err)
    if isinstance(err, NestrankError):
        row, message = wire(err), str(err)
    else:
        row, message = WIRE[BackendError], "internal error in the HTTP front; its log has the traceback"
    param = err.field if isinstance(err, ValidationError) else "model" if isinstance(err, ModelNotFoundError) else None
    body = error_body(path, row, message, param)
    status = row.tei_http if path in TEI_PATHS else row.http
    hint = err.retry_after_s if isinstance(err, OverloadedError) else None  # the server's own estimate, when it has one
    return JSONResponse(body, status, headers=error_headers(status, int(hint or retry_after_s)))


def status_row(status: int) -> Wire:
    """The row for a status the framework raised without a kind (an unknown route, a wrong method): the table's
    first row with that status, else the table's request error (4xx) or backend error (5xx)."""
    fallback = WIRE[ValidationError] if status < 500 else WIRE[BackendError]
    return next((row for row in WIRE.values() if row.http == status), fallback)


def _field(loc) -> str:
    """pydantic's error location as the caller wrote the field: ("body", "input", 3) → "input[3]". Union member
    tags pydantic inserts ("str", "list[str]", ...) are dropped."""
    parts = []
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part.isidentifier() and part not in ("str", "int", "bool", "float", "list", "dict"):
            parts.append(f".{part}" if parts else part)
    return "".join(parts) or "body"


def validation_error(errors: Sequence[dict]) -> ValidationError:
    """The first of pydantic's errors as the one the request gets, named by its field."""
    first = errors[0]
    field = _field(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return ValidationError("body", f"not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})")
    if first.get("type") == "extra_forbidden":
        return ValidationError(field, "unknown field; the schema is at /openapi.json")
    if first.get("type") == "model_attributes_type" and field == "body":
        return ValidationError("body", "expected a JSON object (with Content-Type: application/json)")
    return ValidationError(field, first.get("msg", "invalid"))


def install(app: FastAPI, retry_after_s: int) -> None:
    async def nestrank_error(request: Request, exc: Exception):
        return error_response(request.url.path, exc, retry_after_s)

    async def request_validation(request: Request, exc: RequestValidationError):
        return error_response(request.url.path, validation_error(exc.errors()), retry_after_s)

    async def http_error(request: Request, exc: HTTPException):
        path, status = request.url.path, exc.status_code
        if status == 413:
            return error_response(path, RequestTooLargeError("body", str(exc.detail)), retry_after_s)
        headers = {**(exc.headers or {}), **error_headers(status, retry_after_s)}
        return JSONResponse(error_body(path, status_row(status), str(exc.detail)), status, headers=headers)

    app.add_exception_handler(NestrankError, nestrank_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, nestrank_error)
