"""One error hierarchy for server and client, and the one table that maps each error to the wire.

- A model answers with the error's `triton_code` (pb_utils.TritonError has no RESOURCE_EXHAUSTED or
  DEADLINE_EXCEEDED, so overload goes out as UNAVAILABLE, as Triton's own queue answers it).
- A client reads the status it sees back into the type with `from_grpc_status`; a BLS model reads a sub-model's
  error with `from_triton_error`; an HTTP front answers with `http_status`. All three use the table below and the
  one short list of Triton messages that tell apart what one status covers.
"""

from __future__ import annotations

from dataclasses import dataclass


class NestrankError(Exception):
    """Base of every error nestrank raises on purpose."""

    grpc_code = "INTERNAL"
    triton_code = "INTERNAL"
    http_status = 500
    retry = "no"  # "no", "elsewhere" (another endpoint, at once) or "backoff" (any endpoint, after a pause)

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
    """The server shed load (its queue is full, or a request waited past the queue's time bound): back off."""


class UnavailableError(NestrankError):
    """This endpoint cannot serve now (down, restarting, a model reloading): try another one."""


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
    retry: str


# The one table. Reading a status back takes the first row that has it, unless a message rule below says otherwise.
WIRE: dict[type[NestrankError], Wire] = {
    ValidationError: Wire("INVALID_ARGUMENT", "INVALID_ARG", 400, "no"),
    RequestTooLargeError: Wire("RESOURCE_EXHAUSTED", "INVALID_ARG", 413, "no"),
    NotFoundError: Wire("NOT_FOUND", "NOT_FOUND", 404, "no"),
    ModelNotFoundError: Wire("NOT_FOUND", "NOT_FOUND", 404, "no"),
    UnsupportedError: Wire("UNIMPLEMENTED", "UNSUPPORTED", 501, "no"),
    UnavailableError: Wire("UNAVAILABLE", "UNAVAILABLE", 503, "elsewhere"),
    OverloadedError: Wire("UNAVAILABLE", "UNAVAILABLE", 429, "backoff"),
    UnauthenticatedError: Wire("UNAUTHENTICATED", "UNAVAILABLE", 401, "no"),  # Triton: UNAVAILABLE "...restricted"
    DeadlineExceededError: Wire("DEADLINE_EXCEEDED", "UNAVAILABLE", 504, "no"),  # the call's one deadline is spent
    ClientClosedError: Wire("CANCELLED", "UNAVAILABLE", 503, "no"),  # never sent: the client itself is gone
    BackendError: Wire("INTERNAL", "INTERNAL", 500, "no"),
}
for _cls, _wire in WIRE.items():
    _cls.grpc_code, _cls.triton_code, _cls.http_status, _cls.retry = _wire.grpc, _wire.triton, _wire.http, _wire.retry

OVERLOADED = "overloaded: "  # how a nestrank model's OverloadedError message starts (UNAVAILABLE is shared)

# Where Triton answers several conditions with one status, its message tells them apart. Keep this list short: a
# rule here is a bet on Triton's wording (2.51), checked against the real server in the integration tests.
TRITON_MESSAGES = (
    ("UNAVAILABLE", "protocol is restricted", UnauthenticatedError),  # a missing or wrong key
    ("UNAVAILABLE", "maximum queue size", OverloadedError),  # the queue is full
    ("UNAVAILABLE", "request timeout expired", OverloadedError),  # a request waited past the queue's bound
    ("UNAVAILABLE", OVERLOADED, OverloadedError),  # nestrank's own models: `error_response` starts them so
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
    being reloaded (UnavailableError), never a misspelling."""
    err = from_grpc_status(TRITON_TO_GRPC.get(code or "", code), message)
    return UnavailableError(message) if isinstance(err, ModelNotFoundError) else err


def http_status(err: BaseException) -> int:
    """The HTTP status for any exception: a NestrankError's own, else 500."""
    return err.http_status if isinstance(err, NestrankError) else 500
