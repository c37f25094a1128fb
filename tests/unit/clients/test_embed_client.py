"""The embed client's core against a fake server: chunks within the batch limit, sorted by length, rows back in
input order, the output named by the precision, the server's validation before sending; the sync form the same."""

import asyncio

import numpy as np
import pytest

from nestrank.clients.embed import AsyncEmbedClient, EmbedClient, _check_texts
from nestrank.clients.transport import Endpoint, RetryPolicy
from nestrank.protocol.embedding import EmbedderConfig
from nestrank.protocol.errors import UnavailableError, ValidationError
from nestrank.protocol.parameters import ModelInfo

CONFIG = EmbedderConfig(width=8, max_length=16, pooling="mean", dimensions=(8, 4), precisions=("float32", "ubinary"))


class FakeServer:
    """Answers embed requests with rows that hold each text's length; records what it was sent."""

    def __init__(self):
        self.requests = []

    async def get_model_config(self, model, as_json=True, **options):
        parameters = {k: {"string_value": v} for k, v in CONFIG.to_parameters().items()}
        return {"config": {"name": model, "max_batch_size": 4, "parameters": parameters}}

    async def infer(self, model, inputs, outputs=None, parameters=None, **options):
        texts = [v.decode() for v in inputs[0]._raw_content_texts]
        (output,) = [o.name() for o in outputs]
        self.requests.append((texts, output, dict(parameters)))
        dims = parameters["dimensions"]
        if output == "embeddings":
            rows = np.array([[len(t)] * dims for t in texts], dtype=np.float32)
        else:
            rows = np.full((len(texts), (dims + 7) // 8), 255, dtype=np.uint8)
        return type("Result", (), {"as_numpy": lambda self, name: rows if name == output else None})()

    async def close(self):
        pass


def fake_client(server: FakeServer) -> AsyncEmbedClient:
    client = AsyncEmbedClient("127.0.0.1:1", "m", retry=RetryPolicy(attempts=1))
    client._endpoints.endpoints = [Endpoint("fake", server)]
    return client


@pytest.fixture(autouse=True)
def raw_texts(monkeypatch):
    """Let the fake server read back the texts an InferInput was given."""
    import tritonclient.grpc.aio as grpcclient

    original = grpcclient.InferInput.set_data_from_numpy

    def keep(self, array):
        self._raw_content_texts = list(array.reshape(-1))
        return original(self, array)

    monkeypatch.setattr(grpcclient.InferInput, "set_data_from_numpy", keep)


def test_info_is_the_typed_model_description():
    info = asyncio.run(fake_client(FakeServer()).info())
    assert isinstance(info, ModelInfo) and info.config == CONFIG and info.max_batch_size == 4
    assert info.width == 8 and info.dimensions == (8, 4)  # config fields read through


def test_rows_come_back_in_input_order_across_sorted_chunks():
    server = FakeServer()
    texts = ["x" * n for n in (9, 1, 5, 3, 7, 2, 8)]
    out = asyncio.run(fake_client(server).embed(texts))
    assert out[:, 0].tolist() == [len(t) for t in texts]
    assert all(len(sent) <= 4 for sent, _, _ in server.requests)  # within the batch limit
    for sent, _, _ in server.requests:
        assert [len(t) for t in sent] == sorted(len(t) for t in sent)


def test_the_precision_names_the_output_and_the_shape():
    server = FakeServer()
    out = asyncio.run(fake_client(server).embed(["a", "b"], dimensions=4, precision="ubinary", batch_size=1))
    assert out.shape == (2, 1) and out.dtype == np.uint8
    assert {output for _, output, _ in server.requests} == {"embeddings_uint8"} and len(server.requests) == 2


def test_the_server_rules_apply_before_sending():
    server = FakeServer()
    client = fake_client(server)
    for options, message in (({"dimensions": 5}, "dimensions: 5 is not served"),
                             ({"precision": "int8"}, "precision: must be one of float32, ubinary"),
                             ({"dimensions": 0}, "dimensions: 0 is not served")):  # fmt: skip
        with pytest.raises(ValidationError, match=message):
            asyncio.run(client.embed(["x"], **options))
    assert server.requests == []


def test_texts_must_be_a_non_empty_list():
    with pytest.raises(ValidationError, match="single string"):
        _check_texts("hello")
    with pytest.raises(ValidationError, match="no texts"):
        _check_texts([])


def test_the_sync_client_is_the_async_one_blocking():
    assert EmbedClient.embed.__wrapped__ is AsyncEmbedClient.embed  # same signature and docstring
    client = EmbedClient("127.0.0.1:1", retry=RetryPolicy(attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01))
    with pytest.raises(UnavailableError) as err:  # port 1 on loopback: refused at once
        client.info()
    assert err.value.retryable
    client.close()
