"""The front's error answers without a server: every kind of the one error table answers its HTTP status in the
envelope of the route's API family, and the guard refuses a missing key and an oversized body before any route runs
(the front here points at a port where nothing listens)."""

import json

import pytest
from fastapi.testclient import TestClient

from nestrank.api.app import create_app
from nestrank.api.errors import error_response
from nestrank.api.settings import FrontSettings
from nestrank.protocol.errors import WIRE, ModelNotFoundError, ValidationError, error
from nestrank.serving.launcher.server import free_ports

KEY = "unit-test-key-0123456789"


@pytest.mark.parametrize("kind", list(WIRE))
def test_every_error_kind_answers_its_table_status_in_both_envelopes(kind):
    err = error(kind, "what went wrong")
    openai = error_response("/v1/embeddings", err)
    assert openai.status_code == WIRE[kind].http
    body = json.loads(openai.body)["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"].endswith("what went wrong")
    assert body["type"] == ("invalid_request_error" if WIRE[kind].http in (400, 401, 404, 413) else
                            "rate_limit_error" if WIRE[kind].http == 429 else "server_error")  # fmt: skip
    tei = error_response("/embed", err)
    assert tei.status_code == WIRE[kind].http and set(json.loads(tei.body)) == {"error", "error_type"}
    assert ("retry-after" in openai.headers) == (WIRE[kind].http in (429, 503))


def test_the_field_is_the_param():
    body = json.loads(error_response("/v1/embeddings", ValidationError("dimensions", "100 is not served")).body)
    assert body["error"]["param"] == "dimensions" and body["error"]["message"] == "dimensions: 100 is not served"
    body = json.loads(error_response("/v1/embeddings", ModelNotFoundError("model: no model 'x'")).body)
    assert body["error"]["param"] == "model" and body["error"]["code"] == "model_not_found"


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
