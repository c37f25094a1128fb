"""The one error table, checked against what each side of the wire must do: every column of every kind (gRPC status,
Triton code, HTTP status, OpenAI type and code, TEI error_type, retry rule, marker; written out here, not read back
from the table), and Triton's own messages (as tritonserver 2.51 words them; tests/integration checks them against
the real server) read back into the right kind, by a client (gRPC status) and by a BLS model (Triton error code)."""

from pathlib import Path

import pytest

from nestrank.protocol import errors

# kind: (gRPC status sent, Triton code a model answers with, HTTP, OpenAI type, OpenAI code, TEI type, retry, marker)
EXPECTED = {
    errors.ValidationError: ("INVALID_ARGUMENT", "INVALID_ARG", 400, "invalid_request_error", None, "validation",
                             "no", ""),
    errors.RequestTooLargeError: ("RESOURCE_EXHAUSTED", "INVALID_ARG", 413, "invalid_request_error",
                                  "request_too_large", "validation", "no", ""),
    errors.UnauthenticatedError: ("UNAUTHENTICATED", "UNAVAILABLE", 401, "invalid_request_error", "invalid_api_key",
                                  "unauthorized", "no", ""),
    errors.NotFoundError: ("NOT_FOUND", "NOT_FOUND", 404, "invalid_request_error", "not_found", "validation", "no",
                           ""),
    errors.ModelNotFoundError: ("NOT_FOUND", "NOT_FOUND", 404, "invalid_request_error", "model_not_found",
                                "backend", "no", ""),
    errors.OverloadedError: ("UNAVAILABLE", "UNAVAILABLE", 429, "rate_limit_error", "overloaded", "overloaded",
                             "backoff", "overloaded: "),
    errors.BackendError: ("INTERNAL", "INTERNAL", 500, "server_error", "internal_error", "backend", "no", ""),
    errors.UnsupportedError: ("UNIMPLEMENTED", "UNSUPPORTED", 501, "invalid_request_error", "unsupported",
                              "backend", "no", ""),
    errors.UnavailableError: ("UNAVAILABLE", "UNAVAILABLE", 503, "server_error", "unavailable", "unhealthy",
                              "elsewhere", ""),
    errors.StoreError: ("UNAVAILABLE", "UNAVAILABLE", 503, "server_error", "store_unavailable", "unhealthy",
                        "elsewhere", "passage store unavailable: "),
    errors.StoreFullError: ("UNAVAILABLE", "UNAVAILABLE", 507, "server_error", "store_full", "backend", "no",
                            "passage store full: "),
    errors.ClientClosedError: ("CANCELLED", "UNAVAILABLE", 503, "server_error", "client_closed", "unhealthy", "no",
                               ""),
    errors.DeadlineExceededError: ("DEADLINE_EXCEEDED", "UNAVAILABLE", 504, "server_error", "deadline_exceeded",
                                   "unhealthy", "no", ""),
}  # fmt: skip


def kinds():
    return {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.NestrankError)}


def test_every_kind_has_the_wire_codes_it_promises():
    assert kinds() - {errors.NestrankError} == set(EXPECTED) == set(errors.WIRE)
    for cls, (grpc, triton, http, openai_type, openai_code, tei, retry, marker) in EXPECTED.items():
        err = errors.error(cls, "message")
        assert (err.grpc_code, err.triton_code, err.http_status, err.retry, err.marker) == (
            grpc, triton, http, retry, marker), cls  # fmt: skip
        row = errors.wire(err)
        assert (row.openai_type, row.openai_code, row.tei) == (openai_type, openai_code, tei), cls
        assert row.tei_http == errors.TEI_STATUS[tei]  # TEI's own status for its error_type
        assert errors.http_status(err) == http
        assert err.retryable is (retry != "no")
    assert errors.http_status(KeyError("x")) == 500


def test_a_full_store_is_not_an_outage_and_an_outage_is_unavailable():
    """The client fails over on UnavailableError (it ejects the endpoint): a full store must not look like one."""
    assert issubclass(errors.StoreError, errors.UnavailableError)
    assert not issubclass(errors.StoreFullError, errors.UnavailableError)
    assert errors.marked(errors.StoreFullError("lmdb:///x: full")) == "passage store full: lmdb:///x: full"
    assert errors.marked(errors.StoreFullError("passage store full: x")) == "passage store full: x"  # once
    passed_on = errors.from_triton_error("UNAVAILABLE", "k_encode: overloaded: 4096 tokens are queued ahead")
    assert errors.marked(passed_on) == "k_encode: overloaded: 4096 tokens are queued ahead"  # a BLS passes it on
    # 2.51's async_exec can hand a sub-model's overload back under another code: the marker still decides
    for code in ("INTERNAL", "UNKNOWN", None):
        assert type(errors.from_triton_error(code, "k_encode: overloaded: 4096 tokens are queued ahead")) is (
            errors.OverloadedError
        )
    assert type(errors.from_triton_error("INVALID_ARG", "passage_ids: 'overloaded: x'")) is errors.ValidationError
    assert errors.marked(errors.ValidationError("top_n", "must be in 1..10")) == "top_n: must be in 1..10"


def test_the_readme_shows_the_table_as_the_code_has_it():
    readme = (Path(__file__).resolve().parents[3] / "docs" / "errors.md").read_text(encoding="utf-8")
    assert errors.markdown_table() in readme, "docs/errors.md: paste errors.markdown_table() into the error table"


def test_the_kinds_keep_the_python_types_callers_catch():
    assert issubclass(errors.RequestTooLargeError, errors.ValidationError)
    assert issubclass(errors.ValidationError, ValueError) and issubclass(errors.DeadlineExceededError, TimeoutError)
    assert issubclass(errors.ModelNotFoundError, errors.NotFoundError) and issubclass(errors.NotFoundError, LookupError)
    err = errors.ValidationError("precision", "must be one of float32")
    assert str(err) == "precision: must be one of float32" and err.field == "precision"


@pytest.mark.parametrize(
    "status, message, cls",
    [
        ("StatusCode.INVALID_ARGUMENT", "dimensions: 33 is not served; choose one of 384, 256", errors.ValidationError),
        ("StatusCode.RESOURCE_EXHAUSTED", "Sent message larger than max (2147483648 vs. 2147483647)",
         errors.RequestTooLargeError),
        ("StatusCode.NOT_FOUND", "passage_ids[0]: unknown passage id 'ab12' at ratio 4", errors.NotFoundError),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'kalm-reranker-v1-nano' is not found",
         errors.ModelNotFoundError),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
         "Failed to connect to remote host: Connection refused", errors.UnavailableError),
        ("StatusCode.UNAVAILABLE", "Request for unknown model: 'm' has no available versions", errors.UnavailableError),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", errors.OverloadedError),
        ("StatusCode.UNAVAILABLE", "Request timeout expired", errors.OverloadedError),
        ("StatusCode.UNAVAILABLE", "passage store full: writing passage ids: lmdb:///x: full (map_size 4096 bytes "
         "holds only pinned passages); open it with a larger map_size", errors.StoreFullError),
        ("StatusCode.UNAVAILABLE", "passage store unavailable: reading passage states: redis://r:6379/0: "
         "ConnectionError", errors.StoreError),
        ("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header "
         "'triton-grpc-protocol-nestrank-api-key'", errors.UnauthenticatedError),
        ("StatusCode.UNAUTHENTICATED", "bad token", errors.UnauthenticatedError),
        ("StatusCode.INTERNAL", "Failed to process the request(s) for model 'm_0_0', message: Stub process 'm_0_0' is "
         "not healthy.", errors.UnavailableError),
        ("StatusCode.INTERNAL", "internal error (KeyError); the server log has the details", errors.BackendError),
        ("StatusCode.UNIMPLEMENTED", "not supported", errors.UnsupportedError),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", errors.DeadlineExceededError),
        ("StatusCode.CANCELLED", "Locally cancelled by application!", errors.UnavailableError),
        ("StatusCode.UNKNOWN", "Exception iterating responses", errors.BackendError),
        (None, "no status at all", errors.BackendError),
    ],
)  # fmt: skip
def test_a_client_reads_each_status_and_message_back_into_its_kind(status, message, cls):
    err = errors.from_grpc_status(status, message)
    assert type(err) is cls and str(err) == message
    assert err.grpc_code == (status.rsplit(".", 1)[-1] if status else cls.grpc_code)  # what was seen, for counting


@pytest.mark.parametrize(
    "code, message, cls",
    [
        ("INVALID_ARG", "documents[3]: empty string; send at least one character", errors.ValidationError),
        ("UNAVAILABLE", "Exceeds maximum queue size", errors.OverloadedError),
        ("UNAVAILABLE", "Request timeout expired", errors.OverloadedError),
        ("INTERNAL", "Failed to process the request(s) for model 'k_encode_0_0', message: Stub process "
         "'k_encode_0_0' is not healthy.", errors.UnavailableError),
        ("NOT_FOUND", "Request for unknown model: 'k_encode' is not found", errors.UnavailableError),  # reloading
        ("INTERNAL", "Error when running inference: Failed for execute the inference request. Model 'k_encode' is "
         "not ready.", errors.UnavailableError),  # reloading, as 2.51 answers a BLS sub-request
        ("UNAVAILABLE", "overloaded: 4096 tokens are queued ahead", errors.OverloadedError),  # our own scheduler
        ("UNAVAILABLE", "k_encode: passage store full: writing passage ids: lmdb:///x: full", errors.StoreFullError),
        ("UNAVAILABLE", "passage store unavailable: reading passage states: redis://r:6379/0: TimeoutError",
         errors.StoreError),
        ("UNAVAILABLE", "Request for unknown model: 'k_score' has no available versions", errors.UnavailableError),
        ("NOT_FOUND", "passage_ids[0]: unknown passage id", errors.NotFoundError),
        ("UNSUPPORTED", "not supported", errors.UnsupportedError),
        ("INTERNAL", "internal error (ValueError); the server log has the details", errors.BackendError),
        ("UNKNOWN", "?", errors.BackendError),
        ("NO_SUCH_CODE", "?", errors.BackendError),
    ],
)  # fmt: skip
def test_a_bls_model_reads_a_sub_models_error_into_its_kind(code, message, cls):
    err = errors.from_triton_error(code, message)
    assert type(err) is cls and str(err) == message


def test_what_a_model_answers_comes_back_as_the_same_kind():
    """Server → wire → client: each kind a model raises goes out as its Triton code, which Triton sends as the
    gRPC status of TRITON_TO_GRPC, and comes back as the same kind (where the code alone can tell)."""
    for cls in (errors.ValidationError, errors.NotFoundError, errors.UnsupportedError, errors.BackendError,
                errors.UnavailableError, errors.OverloadedError, errors.StoreError, errors.StoreFullError):  # fmt: skip
        status, message = errors.TRITON_TO_GRPC[cls.triton_code], errors.marked(errors.error(cls, "x"))
        assert type(errors.from_grpc_status(status, message)) is cls
        assert type(errors.from_triton_error(cls.triton_code, message)) is cls
    assert type(errors.from_grpc_status("UNAVAILABLE", "Exceeds maximum queue size")) is errors.OverloadedError


def test_an_overload_hint_survives_every_hop():
    """The scheduler's "retry after N s" reaches the client through a model's answer, a BLS hop and gRPC."""
    refusal = errors.OverloadedError(f"8185 tokens are queued ahead (≈ 33 s at 244 tokens/s); {errors.retry_hint(3.2)}")
    assert refusal.retry_after_s == 4 and errors.OverloadedError("queue full; retry later").retry_after_s is None
    through_bls = errors.from_triton_error("INTERNAL", f"k_encode: {errors.marked(refusal)}")
    at_client = errors.from_grpc_status("StatusCode.UNAVAILABLE", f"k: {errors.marked(through_bls)}")
    assert isinstance(at_client, errors.OverloadedError) and at_client.retry_after_s == 4
    assert errors.OverloadedError(errors.retry_hint(0.01)).retry_after_s == 1  # at least a second
