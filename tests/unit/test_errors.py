import pytest

from nestrank import errors


@pytest.mark.parametrize(
    "status, cls, retryable",
    [
        ("StatusCode.INVALID_ARGUMENT", errors.ValidationError, False),
        ("UNAVAILABLE", errors.UnavailableError, True),
        ("StatusCode.RESOURCE_EXHAUSTED", errors.OverloadedError, True),
        ("StatusCode.DEADLINE_EXCEEDED", errors.DeadlineExceededError, False),
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
