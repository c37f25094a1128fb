"""The front's error answers without a server: every kind of the one error table answers its HTTP status in the
envelope of the route's API family, and the guard refuses a missing key and an oversized body before any route runs
(the front here points at a port where nothing listens)."""

import json

import pytest
from fastapi.testclient import TestClient

from nestrank.api.app import create_app
from nestrank.api.errors import error_response
from nestrank.api.settings import FrontSettings
from nestrank.protocol import errors
from nestrank.protocol.errors import ModelNotFoundError, NotFoundError, ValidationError
from nestrank.serving.launcher.server import free_ports

KEY = "unit-test-key-0123456789"


# kind: (HTTP status, OpenAI type, OpenAI code, TEI error_type, TEI status), as a caller of each API family expects them
ENVELOPES = {
    errors.ValidationError: (400, "invalid_request_error", None, "validation", 413),
    errors.RequestTooLargeError: (413, "invalid_request_error", "request_too_large", "validation", 413),
    errors.UnauthenticatedError: (401, "invalid_request_error", "invalid_api_key", "unauthorized", 401),
    errors.NotFoundError: (404, "invalid_request_error", "not_found", "validation", 413),
    errors.ModelNotFoundError: (404, "invalid_request_error", "model_not_found", "backend", 424),
    errors.UnsupportedError: (501, "invalid_request_error", "unsupported", "backend", 424),
    errors.OverloadedError: (429, "rate_limit_error", "overloaded", "overloaded", 429),
    errors.UnavailableError: (503, "server_error", "unavailable", "unhealthy", 503),
    errors.StoreError: (503, "server_error", "store_unavailable", "unhealthy", 503),
    errors.StoreFullError: (507, "server_error", "store_full", "backend", 424),
    errors.ClientClosedError: (503, "server_error", "client_closed", "unhealthy", 503),
    errors.DeadlineExceededError: (504, "server_error", "deadline_exceeded", "unhealthy", 503),
    errors.BackendError: (500, "server_error", "internal_error", "backend", 424),
}


def test_every_kind_of_the_table_has_its_envelope_here():
    assert set(ENVELOPES) == set(errors.WIRE)


@pytest.mark.parametrize("kind", list(ENVELOPES))
def test_every_error_kind_answers_its_status_in_both_envelopes(kind):
    status, openai_type, openai_code, tei_type, tei_status = ENVELOPES[kind]
    err = errors.error(kind, "what went wrong")
    openai = error_response("/v1/embeddings", err)
    assert openai.status_code == status
    body = json.loads(openai.body)["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"].endswith("what went wrong")
    assert (body["type"], body["code"]) == (openai_type, openai_code)
    tei = error_response("/embed", err)
    assert tei.status_code == tei_status
    assert json.loads(tei.body) == {"error": "what went wrong", "error_type": tei_type}
    assert ("retry-after" in openai.headers) == (status in (429, 503))
    assert ("retry-after" in tei.headers) == (tei_status in (429, 503))


def test_an_overload_with_the_servers_estimate_says_when_in_retry_after():
    hinted = errors.OverloadedError(f"8185 tokens are queued ahead; {errors.retry_hint(32.4)}")
    assert error_response("/v1/rerank", hinted, retry_after_s=1).headers["retry-after"] == "33"
    assert error_response("/v1/rerank", errors.OverloadedError("full"), retry_after_s=2).headers["retry-after"] == "2"


def test_a_passage_id_404_and_a_model_404_differ():
    passage = json.loads(error_response("/v1/rerank", NotFoundError("passage_ids[0]: unknown passage id 'x'")).body)
    model = json.loads(error_response("/v1/rerank", ModelNotFoundError("model: no model 'x'")).body)
    assert (passage["error"]["code"], passage["error"]["param"]) == ("not_found", None)
    assert (model["error"]["code"], model["error"]["param"]) == ("model_not_found", "model")


def test_the_field_is_the_param():
    body = json.loads(error_response("/v1/embeddings", ValidationError("dimensions", "100 is not served")).body)
    assert body["error"]["param"] == "dimensions" and body["error"]["message"] == "dimensions: 100 is not served"


def test_a_bug_is_a_500_that_leaks_nothing():
    response = error_response("/v1/embeddings", KeyError("secret internals"))
    assert response.status_code == 500 and b"secret" not in response.body


@pytest.fixture(scope="module")
def client():
    (port,) = free_ports(1)
    settings = FrontSettings(triton_urls=(f"127.0.0.1:{port}",), api_key=KEY, max_body_bytes=1000, models=("m",))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_the_key_is_checked_before_anything_else(client):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Token {KEY}"}):
        response = client.post("/v1/embeddings", json={"model": "m", "input": "x"}, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.get("/health").status_code == 503  # open (no 401), and honest: no Triton answers
    assert client.get("/openapi.json").status_code == 200
    unknown = client.get("/v1/nothing-here", headers={"Authorization": f"Bearer {KEY}"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_an_oversized_body_is_413_whether_declared_or_streamed(client):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    declared = client.post("/v1/embeddings", content=b"x" * 1001, headers=auth)
    assert declared.status_code == 413 and "1001 bytes exceed the limit of 1000" in declared.text
    streamed = client.post("/embed", content=iter([b"x" * 600, b"x" * 600]), headers=auth)
    assert streamed.status_code == 413 and streamed.json()["error_type"] == "validation"


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "body: not valid JSON"),
    (b"[1, 2]", "body: expected a JSON object"),
    (b'{"model": "m", "input": "x", "extra": 1}', "extra: unknown field"),
    (b'{"model": "m", "input": [1, 2]}', "input: token ids (int[] or int[][]) are not accepted"),
    (b'{"model": "m", "input": "x", "dimensions": "64"}', "dimensions: Input should be a valid integer"),
])  # fmt: skip
def test_bad_bodies_are_400_naming_the_field(client, body, message):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = client.post("/v1/embeddings", content=body, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["message"].startswith(message), response.text
