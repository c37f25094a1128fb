"""One error hierarchy for server and client, mapped to status codes in one place.

Server side: `triton_code_name(err)` names the `pb_utils.TritonError` code a Python-backend
model answers with. Client side: `from_grpc_status(code, message)` turns a gRPC status into the
matching typed error.
"""

from __future__ import annotations


class NestrankError(Exception):
    """Base of every error nestrank raises on purpose."""

    grpc_code = "INTERNAL"
    triton_code = "INTERNAL"
    retryable = False


class ValidationError(NestrankError, ValueError):
    """The request is malformed; the message names the field and the limit."""

    grpc_code = "INVALID_ARGUMENT"
    triton_code = "INVALID_ARG"

    def __init__(self, field: str | None, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class NotFoundError(NestrankError, LookupError):
    """A model, passage id or other named thing does not exist."""

    grpc_code = "NOT_FOUND"
    triton_code = "NOT_FOUND"


class UnsupportedError(NestrankError):
    """Well-formed, but this model or server does not do it."""

    grpc_code = "UNIMPLEMENTED"
    triton_code = "UNSUPPORTED"


class OverloadedError(NestrankError):
    """The server shed load (queue full); safe to retry later."""

    grpc_code = "RESOURCE_EXHAUSTED"
    triton_code = "UNAVAILABLE"
    retryable = True


class UnavailableError(NestrankError):
    """The endpoint cannot be reached or is not ready; safe to retry, maybe elsewhere."""

    grpc_code = "UNAVAILABLE"
    triton_code = "UNAVAILABLE"
    retryable = True


class DeadlineExceededError(NestrankError, TimeoutError):
    """The request did not finish within its deadline."""

    grpc_code = "DEADLINE_EXCEEDED"
    triton_code = "UNAVAILABLE"


class UnauthenticatedError(NestrankError):
    """The server wants a key (or TLS client certificate) this request did not carry; retrying will not help."""

    grpc_code = "UNAUTHENTICATED"
    triton_code = "UNAVAILABLE"


class BackendError(NestrankError):
    """The model failed while running a valid request."""

    grpc_code = "INTERNAL"
    triton_code = "INTERNAL"


_BY_GRPC_CODE = {
    "INVALID_ARGUMENT": ValidationError,
    "NOT_FOUND": NotFoundError,
    "UNIMPLEMENTED": UnsupportedError,
    "RESOURCE_EXHAUSTED": ValidationError,  # e.g. over gRPC's message size limit: the request itself is too large
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
}


# Triton answers several conditions with one status; its message tells them apart.
_BY_TRITON_MESSAGE = (
    ("UNAVAILABLE", "protocol is restricted", UnauthenticatedError),  # a missing or wrong key
    ("UNAVAILABLE", "maximum queue size", OverloadedError),  # the model's queue is full: back off
    ("UNAVAILABLE", "request timeout expired", OverloadedError),  # it waited past the queue's time bound
    ("RESOURCE_EXHAUSTED", "queue", OverloadedError),
    ("INTERNAL", "stub process", UnavailableError),  # a model's backend process died; the launcher reloads it
    ("NOT_FOUND", "unknown model", UnavailableError),  # a model being reloaded, or not on this replica
    ("UNAVAILABLE", "is not ready", UnavailableError),
)


def from_grpc_status(code: str | None, message: str) -> NestrankError:
    """Typed error for a gRPC status; `code` may be "INVALID_ARGUMENT" or "StatusCode.INVALID_ARGUMENT"."""
    name = (code or "").rsplit(".", 1)[-1]
    lowered = message.lower()
    cls = next((c for n, text, c in _BY_TRITON_MESSAGE if n == name and text in lowered), None)
    cls = cls or _BY_GRPC_CODE.get(name, BackendError)
    err = ValidationError(None, message) if cls is ValidationError else cls(message)
    err.grpc_code = name or cls.grpc_code
    return err
