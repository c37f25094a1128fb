"""One error hierarchy for server and client, and the one table (WIRE) that maps each kind to every wire: the gRPC
status, the Triton code a model answers with, the HTTP status, the OpenAI envelope's `type` and `code`, TEI's
`error_type` (and so TEI's status for it), and the client's retry rule.

- A model answers with the error's `triton_code` and, where that status is shared, its `marker` at the start of the
  message (pb_utils.TritonError has no RESOURCE_EXHAUSTED, so overload and a full store go out as UNAVAILABLE).
- A client reads the status it sees back into the kind with `from_grpc_status`; a BLS model reads a sub-model's
  error with `from_triton_error`; the HTTP front renders the row of the kind (api/errors.py). All of them use the
  table and the one short list of messages that tell apart what one status covers.
- `markdown_table()` is the docs' table (docs/errors.md; a test keeps the two equal).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


class NestrankError(Exception):
    """Base of every error nestrank raises on purpose. Its wire codes are its row of WIRE, below."""

    grpc_code = "INTERNAL"
    triton_code = "INTERNAL"
    http_status = 500
    retry = "no"  # "no", "elsewhere" (another endpoint, at once) or "backoff" (any endpoint, after a pause)
    marker = ""  # how its message starts where its status is shared with other kinds ("" where it is not)

    @property
    def retryable(self) -> bool:
        return self.retry != "no"


class ValidationError(NestrankError, ValueError):
    """The request is malformed; the message names the field and the limit."""

    def __init__(self, field: str | None, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class RequestTooLargeError(ValidationError):
    """The request is larger than a limit of the transport or the deployment (gRPC's message size, memory)."""


class NotFoundError(NestrankError, LookupError):
    """A named thing (a passage id, say) is not on this server."""


class ModelNotFoundError(NotFoundError):
    """The server does not serve a model of that name (a misspelled name; or, while the server is not ready, a
    model being reloaded: the client tells the two apart by asking for readiness)."""


class UnsupportedError(NestrankError):
    """Well-formed, but this model or server does not do it."""


class OverloadedError(NestrankError):
    """The server shed load (its queue is full, or a request waited past the queue's time bound): back off. Where
    the server knows when it will have room (its scheduler's estimate), the message ends with `retry_hint(s)`,
    which `retry_after_s` reads back on the other side of any hop (gRPC, BLS, HTTP)."""

    @property
    def retry_after_s(self) -> float | None:
        found = _RETRY_AFTER.search(str(self))
        return float(found.group(1)) if found else None


def retry_hint(seconds: float) -> str:
    """The end of an overload message: when to retry, in whole seconds (at least 1)."""
    return f"retry after {max(1, math.ceil(seconds))} s"


_RETRY_AFTER = re.compile(r"retry after (\d+) s")


class UnavailableError(NestrankError):
    """This endpoint cannot serve now (down, restarting, a model reloading): try another one."""


class StoreError(UnavailableError):
    """The passage store did not answer or failed an operation (an outage); the message names the store. Another
    replica may reach it (or have its own LMDB), so it is retried elsewhere, as any UNAVAILABLE."""


class StoreFullError(NestrankError):
    """The passage store has no room for a write it must keep (an index run's pinned passages), even after every
    on-demand entry that could go went. Not the endpoint's fault and not the request's: the operator's (a larger
    LMDB map_size, Redis maxmemory), so never retried, and never a 500. HTTP 507 (Insufficient Storage)."""


class UnauthenticatedError(NestrankError):
    """A key (or a TLS client certificate) the server wants was missing or wrong; retrying will not help."""


class DeadlineExceededError(NestrankError, TimeoutError):
    """The call's deadline passed before it finished; what it had started is cancelled."""


class ClientClosedError(NestrankError):
    """The client was closed (by `close()`, or while its owner shuts down) before or while this call ran."""


class BackendError(NestrankError):
    """The model failed while running a valid request."""


@dataclass(frozen=True)
class Wire:
    grpc: str  # the status a client sees
    triton: str  # the pb_utils.TritonError code a model answers with
    http: int  # what an HTTP front answers
    openai_type: str  # the OpenAI envelope's error.type
    openai_code: str | None  # its error.code (OpenAI's own where it has one: model_not_found, invalid_api_key)
    tei: str  # TEI's error_type
    retry: str  # "no", "elsewhere" or "backoff"
    marker: str = ""  # the message's start, where the status is shared (a model's error_response adds it)

    @property
    def tei_http(self) -> int:
        """What a TEI route answers: TEI's own status for its error_type."""
        return TEI_STATUS[self.tei]


# Text Embeddings Inference's status per error_type (its router's ErrorType → StatusCode), and its 401.
TEI_STATUS = {"validation": 413, "tokenizer": 422, "backend": 424, "overloaded": 429, "unhealthy": 503,
              "empty": 400, "unauthorized": 401}  # fmt: skip


OVERLOADED = "overloaded: "  # how a nestrank model's OverloadedError message starts (UNAVAILABLE is shared)
STORE_FULL = "passage store full: "  # likewise for StoreFullError
STORE_UNAVAILABLE = "passage store unavailable: "  # and StoreError (UnavailableError's own status and retry rule)

# The one table. Reading a status back takes the first row that has it, unless a message rule below says otherwise.
# pb_utils.TritonError has no RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED: what a model cannot send goes out as
# UNAVAILABLE with the kind's marker, as Triton's own queue answers overload.
WIRE: dict[type[NestrankError], Wire] = {
    ValidationError: Wire("INVALID_ARGUMENT", "INVALID_ARG", 400, "invalid_request_error", None, "validation", "no"),
    RequestTooLargeError: Wire("RESOURCE_EXHAUSTED", "INVALID_ARG", 413, "invalid_request_error", "request_too_large",
                               "validation", "no"),
    NotFoundError: Wire("NOT_FOUND", "NOT_FOUND", 404, "invalid_request_error", "not_found", "validation", "no"),
    ModelNotFoundError: Wire("NOT_FOUND", "NOT_FOUND", 404, "invalid_request_error", "model_not_found", "backend",
                             "no"),  # TEI: "model is not a re-ranker model", its 424
    UnsupportedError: Wire("UNIMPLEMENTED", "UNSUPPORTED", 501, "invalid_request_error", "unsupported", "backend",
                           "no"),
    UnavailableError: Wire("UNAVAILABLE", "UNAVAILABLE", 503, "server_error", "unavailable", "unhealthy", "elsewhere"),
    StoreError: Wire("UNAVAILABLE", "UNAVAILABLE", 503, "server_error", "store_unavailable", "unhealthy", "elsewhere",
                     STORE_UNAVAILABLE),
    OverloadedError: Wire("UNAVAILABLE", "UNAVAILABLE", 429, "rate_limit_error", "overloaded", "overloaded", "backoff",
                          OVERLOADED),
    StoreFullError: Wire("UNAVAILABLE", "UNAVAILABLE", 507, "server_error", "store_full", "backend", "no", STORE_FULL),
    UnauthenticatedError: Wire("UNAUTHENTICATED", "UNAVAILABLE", 401, "invalid_request_error", "invalid_api_key",
                               "unauthorized", "no"),  # Triton: UNAVAILABLE "...restricted"
    DeadlineExceededError: Wire("DEADLINE_EXCEEDED", "UNAVAILABLE", 504, "server_error", "deadline_exceeded",
                                "unhealthy", "no"),  # the call's one deadline is spent
    ClientClosedError: Wire("CANCELLED", "UNAVAILABLE", 503, "server_error", "client_closed", "unhealthy",
                            "no"),  # never sent: the client itself is gone
    BackendError: Wire("INTERNAL", "INTERNAL", 500, "server_error", "internal_error", "backend", "no"),
}  # fmt: skip
for _cls, _wire in WIRE.items():
    _cls.grpc_code, _cls.triton_code, _cls.http_status = _wire.grpc, _wire.triton, _wire.http
    _cls.retry, _cls.marker = _wire.retry, _wire.marker


def wire(err: type[NestrankError] | NestrankError) -> Wire:
    """The row of a kind (or of an error's kind); a subclass defined elsewhere takes its nearest listed base's."""
    cls = err if isinstance(err, type) else type(err)
    return next(WIRE[c] for c in cls.__mro__ if c in WIRE)


# Where Triton answers several conditions with one status, its message tells them apart. Keep this list short: a
# rule here is a bet on Triton's wording (2.51), checked against the real server in the integration tests.
TRITON_MESSAGES = (
    ("UNAVAILABLE", "protocol is restricted", UnauthenticatedError),  # a missing or wrong key
    ("UNAVAILABLE", "maximum queue size", OverloadedError),  # the queue is full
    ("UNAVAILABLE", "request timeout expired", OverloadedError),  # a request waited past the queue's bound
    *(("UNAVAILABLE", w.marker, c) for c, w in WIRE.items() if w.marker),  # nestrank's models: error_response adds
    ("INTERNAL", "stub process", UnavailableError),  # "Stub process '...' is not healthy": a backend process died
    ("INTERNAL", "is not ready", UnavailableError),  # a BLS sub-request to a model the launcher is reloading
    ("NOT_FOUND", "unknown model", ModelNotFoundError),  # "Request for unknown model: '...' is not found"
)
_BY_STATUS: dict[str, type[NestrankError]] = {"CANCELLED": UnavailableError}  # the server dropped it (shutting down)
for _cls, _wire in WIRE.items():
    _BY_STATUS.setdefault(_wire.grpc, _cls)
_BY_STATUS["UNAUTHENTICATED"] = _BY_STATUS["PERMISSION_DENIED"] = UnauthenticatedError  # a proxy's or a TLS front's

# pb_utils.TritonError code names (what a BLS model sees on a sub-response) → the gRPC status Triton sends for them.
TRITON_TO_GRPC = {
    "INVALID_ARG": "INVALID_ARGUMENT",
    "UNSUPPORTED": "UNIMPLEMENTED",
    "NOT_FOUND": "NOT_FOUND",
    "UNAVAILABLE": "UNAVAILABLE",
    "INTERNAL": "INTERNAL",
    "ALREADY_EXISTS": "ALREADY_EXISTS",
    "CANCELLED": "CANCELLED",
    "UNKNOWN": "UNKNOWN",
}


def error(cls: type[NestrankError], message: str) -> NestrankError:
    """An instance of `cls` carrying `message` (ValidationError and its kinds take a field first)."""
    return cls(None, message) if issubclass(cls, ValidationError) else cls(message)


def from_grpc_status(code: str | None, message: str) -> NestrankError:
    """Typed error for a gRPC status; `code` may be "INVALID_ARGUMENT" or "StatusCode.INVALID_ARGUMENT"."""
    name = (code or "").rsplit(".", 1)[-1]
    lowered = message.lower()
    cls = next((c for status, text, c in TRITON_MESSAGES if status == name and text in lowered), None)
    err = error(cls or _BY_STATUS.get(name, BackendError), message)
    err.grpc_code = name or err.grpc_code
    return err


def from_triton_error(code: str | None, message: str) -> NestrankError:
    """Typed error for a Triton error a Python-backend model sees on a BLS sub-response: `code` is the
    pb_utils.TritonError name ("INVALID_ARG", "UNAVAILABLE", ...). Same table and message rules as
    `from_grpc_status`, with one difference: a sub-model is part of the caller's own pipeline, so an unknown one is
    being reloaded (UnavailableError), never a misspelling. A nestrank sub-model's marker decides its kind whatever
    code came with it: on 2.51 an overloaded `_encode` reached the rerank model's BLS call as another code, and
    so reached its caller as INTERNAL (measured: `nestrank bench fbnl --shape nano`)."""
    lowered = message.lower()
    marked_kind = next((c for c, w in WIRE.items() if w.marker and w.marker in lowered), None)
    marked_kind = marked_kind if code in (None, "INTERNAL", "UNKNOWN", "UNAVAILABLE") else None  # not a caller's text
    if marked_kind is not None:
        return error(marked_kind, message)
    err = from_grpc_status(TRITON_TO_GRPC.get(code or "", code), message)
    return UnavailableError(message) if isinstance(err, ModelNotFoundError) else err


def http_status(err: BaseException) -> int:
    """The HTTP status for any exception: a NestrankError's own, else 500."""
    return err.http_status if isinstance(err, NestrankError) else 500


def marked(err: NestrankError) -> str:
    """The message a model sends for `err`: its own, with its kind's marker first unless the marker is in it already
    (a sub-model's error, passed on as `"<model>: <its message>"`); readers look for the marker anywhere."""
    message = str(err)
    return message if not err.marker or err.marker in message.lower() else err.marker + message


def markdown_table() -> str:
    """The table as docs/errors.md shows it: one row per kind, every column."""
    rows = ["| kind | gRPC | Triton | HTTP | OpenAI type | OpenAI code | TEI error_type | TEI HTTP | retry | marker |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for cls, w in WIRE.items():
        cells = (f"`{cls.__name__}`", w.grpc, w.triton, str(w.http), w.openai_type, w.openai_code or "null", w.tei,
                 str(w.tei_http), w.retry, f'"{w.marker}"' if w.marker else "")  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
