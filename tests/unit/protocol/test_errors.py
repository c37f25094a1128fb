import pytest

from nestrank.protocol import errors


@pytest.mark.parametrize(
    "status, cls, retryable",
    [
        ("StatusCode.INVALID_ARGUMENT", errors.ValidationError, False),
        ("UNAVAILABLE", errors.UnavailableError, True),
        ("StatusCode.RESOURCE_EXHAUSTED", errors.ValidationError, False),
        ("StatusCode.DEADLINE_EXCEEDED", errors.DeadlineExceededError, True),
        ("StatusCode.NOT_FOUND", errors.NotFoundError, False),
        ("StatusCode.INTERNAL", errors.BackendError, False),
        (None, errors.BackendError, False),
    ],
)
def test_grpc_status_maps_to_typed_errors(status, cls, retryable):
    err = errors.from_grpc_status(status, "dimensions: 33 is not served")
    assert type(err) is cls
    assert err.retryable is retryable
    assert "33 is not served" in str(err)


def test_validation_error_message_names_the_field():
    err = errors.ValidationError("precision", "must be one of float32")
    assert str(err) == "precision: must be one of float32" and err.field == "precision"
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    "status, message, cls",
    [
        ("UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-nestrank-api-key'",
         errors.UnauthenticatedError),
        ("UNAVAILABLE", "Exceeds maximum queue size", errors.OverloadedError),
        ("INTERNAL", "Failed to process the request(s) for model 'm', message: Stub process 'm_0_0' is not healthy.",
         errors.UnavailableError),
        ("NOT_FOUND", "Request for unknown model: 'm' is not found", errors.UnavailableError),
        ("UNAVAILABLE", "failed to connect to all addresses", errors.UnavailableError),
    ],
)  # fmt: skip
def test_triton_messages_tell_apart_what_one_status_covers(status, message, cls):
    err = errors.from_grpc_status(status, message)
    assert type(err) is cls
    assert err.retryable is (cls in (errors.OverloadedError, errors.UnavailableError))
    assert err.retry == {errors.OverloadedError: "backoff", errors.UnavailableError: "elsewhere"}.get(cls, "no")


def test_one_table_covers_every_error():
    kinds = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.NestrankError)}
    assert kinds - {errors.NestrankError} == set(errors.WIRE)
    for cls, wire in errors.WIRE.items():
        assert (cls.grpc_code, cls.triton_code, cls.http_status, cls.retry) == (
            wire.grpc,
            wire.triton,
            wire.http,
            wire.retry,
        )
    assert errors.NotFoundError.grpc_code == "NOT_FOUND" and errors.UnauthenticatedError.http_status == 403
    # what a model answers with comes back as the same type (where the status alone can tell)
    for cls in (errors.ValidationError, errors.NotFoundError, errors.UnsupportedError, errors.BackendError):
        assert type(errors.from_grpc_status(cls.grpc_code, "x")) is cls
