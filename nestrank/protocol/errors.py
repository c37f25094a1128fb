"""One error hierarchy for server and client, and the one table that maps each error to the wire.

Server side: a model answers with the error's `triton_code` (pb_utils.TritonError has no RESOURCE_EXHAUSTED or
DEADLINE_EXCEEDED, so overload goes out as UNAVAILABLE, as Triton's own queue answers it). Client side:
`from_grpc_status` turns the status a client sees, and the words Triton puts in its message, back into the type.
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


class NotFoundError(NestrankError, LookupError):
    """A named thing (a passage id, say) is not on this server."""


class UnsupportedError(NestrankError):
    """Well-formed, but this model or server does not do it."""


class OverloadedError(NestrankError):
    """The server shed load (its queue is full, or a request waited past the queue's time bound): back off."""


class UnavailableError(NestrankError):
    """This endpoint cannot serve now (down, restarting, a model reloading): try another one."""


class UnauthenticatedError(NestrankError):
    """A key (or a TLS client certificate) the server wants was missing or wrong; retrying will not help."""


class DeadlineExceededError(NestrankError, TimeoutError):
    """An attempt did not finish within its deadline."""


class BackendError(NestrankError):
    """The model failed while running a valid request."""


@dataclass(frozen=True)
class Wire:
    grpc: str  # the status a client sees
    triton: str  # the pb_utils.TritonError code a model answers with
    http: int
    retry: str


# The one table. Order matters only for reading back a status that several errors share (the first one wins).
WIRE: dict[type[NestrankError], Wire] = {
    ValidationError: Wire("INVALID_ARGUMENT", "INVALID_ARG", 400, "no"),
    NotFoundError: Wire("NOT_FOUND", "NOT_FOUND", 404, "no"),
    UnsupportedError: Wire("UNIMPLEMENTED", "UNSUPPORTED", 501, "no"),
    UnavailableError: Wire("UNAVAILABLE", "UNAVAILABLE", 503, "elsewhere"),
    OverloadedError: Wire("UNAVAILABLE", "UNAVAILABLE", 503, "backoff"),
    UnauthenticatedError: Wire("UNAVAILABLE", "UNAVAILABLE", 403, "no"),  # as Triton answers a restricted API
    DeadlineExceededError: Wire("DEADLINE_EXCEEDED", "UNAVAILABLE", 504, "elsewhere"),
    BackendError: Wire("INTERNAL", "INTERNAL", 500, "no"),
}
for _cls, _wire in WIRE.items():
    _cls.grpc_code, _cls.triton_code, _cls.http_status, _cls.retry = _wire.grpc, _wire.triton, _wire.http, _wire.retry

# Triton answers several conditions with one status; its message tells them apart.
_BY_MESSAGE = (
    ("UNAVAILABLE", "protocol is restricted", UnauthenticatedError),
    ("UNAVAILABLE", "maximum queue size", OverloadedError),
    ("UNAVAILABLE", "request timeout expired", OverloadedError),
    ("INTERNAL", "stub process", UnavailableError),  # a model's backend process died; the launcher reloads it
    ("NOT_FOUND", "unknown model", UnavailableError),  # a model being reloaded, or not on this replica
    ("UNAVAILABLE", "is not ready", UnavailableError),
)
_BY_STATUS = {"RESOURCE_EXHAUSTED": ValidationError}  # gRPC's size limits: the request itself is too large
for _cls, _wire in WIRE.items():
    _BY_STATUS.setdefault(_wire.grpc, _cls)


def from_grpc_status(code: str | None, message: str) -> NestrankError:
    """Typed error for a gRPC status; `code` may be "INVALID_ARGUMENT" or "StatusCode.INVALID_ARGUMENT"."""
    name = (code or "").rsplit(".", 1)[-1]
    lowered = message.lower()
    cls = next((c for n, text, c in _BY_MESSAGE if n == name and text in lowered), None)
    cls = cls or _BY_STATUS.get(name, BackendError)
    err = ValidationError(None, message) if cls is ValidationError else cls(message)
    err.grpc_code = name or cls.grpc_code
    return err


def from_triton_error(code: str, message: str) -> NestrankError:
    """Typed error for a Triton error code as a Python model sees it on a sub-request (pb_utils.TritonError's names:
    INVALID_ARG, NOT_FOUND, UNAVAILABLE, INTERNAL, ...), through the same table and message rules as gRPC's."""
    grpc = {"INVALID_ARG": "INVALID_ARGUMENT", "UNSUPPORTED": "UNIMPLEMENTED"}.get(code, code)
    return from_grpc_status(grpc, message)
