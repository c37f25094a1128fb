"""The embed client over real gRPC to a local server that speaks Triton's protocol: chunks within the batch limit,
sorted by length, rows back in input order, the output named by the precision, every bad argument refused as a
ValidationError before anything is sent; the sync form the same."""

import asyncio

import grpc
import numpy as np
import pytest

from nestrank.clients.embed import AsyncEmbedClient, EmbedClient
from nestrank.clients.transport import NO_RETRIES, RetryPolicy
from nestrank.protocol.errors import BackendError, UnavailableError, UnsupportedError, ValidationError
from nestrank.protocol.parameters import ModelInfo
from tests.unit.clients.local_triton import EMBEDDER, LocalTriton, answering, fail


@pytest.fixture
def server():
    running = LocalTriton()
    yield running
    running.stop()


def run(server, method, *args, **kwargs):
    async def one():
        async with AsyncEmbedClient(server.url, "m", retry=NO_RETRIES) as client:
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(one())


def test_info_is_the_typed_model_description(server):
    info = run(server, "info")
    assert isinstance(info, ModelInfo) and info.config == EMBEDDER and info.max_batch_size == 4
    assert info.width == 8 and info.dimensions == (8, 4)  # config fields read through


def test_rows_come_back_in_input_order_across_sorted_chunks(server):
    texts = ["x" * n for n in (9, 1, 5, 3, 7, 2, 8)]
    out = run(server, "embed", texts)
    assert out[:, 0].tolist() == [len(t) for t in texts]
    sent = [r.texts for r in server.requests()]
    assert sorted(len(t) for chunk in sent for t in chunk) == sorted(len(t) for t in texts)
    assert all(len(chunk) <= 4 for chunk in sent)  # within the batch limit
    assert all([len(t) for t in chunk] == sorted(len(t) for t in chunk) for chunk in sent)


def test_the_precision_names_the_output_and_the_shape(server):
    out = run(server, "embed", ["a", "b"], dimensions=4, precision="ubinary", batch_size=1)
    assert out.shape == (2, 1) and out.dtype == np.uint8
    assert len(server.requests()) == 2 and all(r.parameters["precision"] == "ubinary" for r in server.requests())


@pytest.mark.parametrize(
    "texts, options, message",
    [
        (["x"], {"dimensions": 5}, "dimensions: 5 is not served"),
        (["x"], {"precision": "int8"}, "precision: must be one of float32, ubinary"),
        (["x"], {"batch_size": 0}, "batch_size: must be an integer >= 1"),
        (["x"], {"batch_size": "4"}, "batch_size: must be an integer >= 1"),
        (["x"], {"concurrency": 0}, "concurrency: must be an integer >= 1"),
        ("hello", {}, "texts: expected a list of strings, got a single string"),
        ([], {}, "texts: empty"),
        (None, {}, "texts: expected a list of strings, got NoneType"),
        (["ok", None], {}, r"texts\[1\]: expected a string, got NoneType"),
        (["ok", 3], {}, r"texts\[1\]: expected a string, got int"),
        ([b"bytes"], {}, r"texts\[0\]: expected a string, got bytes"),
        (["ok", ""], {}, r"texts\[1\]: empty string"),
        (["ok", "bad \ud800 text"], {}, r"texts\[1\]: not valid Unicode: a lone surrogate at character 4"),
    ],
)
def test_every_bad_argument_is_a_validation_error_before_any_inference(server, texts, options, message):
    with pytest.raises(ValidationError, match=message):
        run(server, "embed", texts, **options)
    assert server.requests() == []


def test_bad_client_arguments_are_validation_errors():
    for options, message in (
        ({"concurrency": 0}, "concurrency"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"timeout_s": "10"}, "timeout_s"),
    ):
        with pytest.raises(ValidationError, match=message):
            AsyncEmbedClient("127.0.0.1:1", **options)
    with pytest.raises(ValidationError, match="url"):
        AsyncEmbedClient([])


def test_a_missing_or_misshapen_output_is_a_backend_error(server):
    server.answer = answering("other", np.zeros((1, 8), "f4"), "FP32")
    with pytest.raises(BackendError, match="no 'embeddings' output"):
        run(server, "embed", ["x"])
    server.answer = answering("embeddings", np.zeros((1, 3), "f4"), "FP32")
    with pytest.raises(BackendError, match=r"shape \[1, 3\]; expected \[1, 8\]"):
        run(server, "embed", ["x"])


def test_a_model_that_is_not_an_embedder_is_unsupported(server):
    async def one():
        async with AsyncEmbedClient(server.url, "r", retry=NO_RETRIES) as client:  # a reranker's config
            return await client.info()

    with pytest.raises(UnsupportedError, match="model 'r' is not a nestrank EmbedderConfig"):
        asyncio.run(one())


def test_the_sync_client_is_the_async_one_blocking(server):
    assert EmbedClient.embed.__wrapped__ is AsyncEmbedClient.embed  # same signature and docstring
    with EmbedClient(server.url, "m") as client:
        assert client.embed(["abc", "a"])[:, 0].tolist() == [3, 1]
    server.answer = fail(grpc.StatusCode.UNAVAILABLE, "failed to connect")
    with EmbedClient(server.url, "m", retry=RetryPolicy(attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)) as c:
        with pytest.raises(UnavailableError) as err:
            c.embed(["x"])
    assert err.value.retryable and len(server.requests("failed")) == 2  # both attempts
