"""Bad input: INVALID_ARGUMENT naming the field and the limit, and no harm to the rest of the batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from tests.names import MINILM

pytestmark = pytest.mark.slow

GOOD_TEXTS = [["alpha beta gamma"], ["the second request"], ["a third one, a bit longer than the others"]]
LONG_TEXT = "word " * 400


def text_input(module, values: list[bytes]):
    tensor = module.InferInput("text", [len(values), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=object).reshape(-1, 1))
    return tensor


BAD_REQUESTS = {
    "empty request": ([], {}, "'text'"),
    "empty string": ([b"fine", b""], {}, "text[1]: empty string"),
    "invalid utf-8": ([b"fine", b"\xc3\x28 broken"], {}, "text[1]: not valid UTF-8"),
    "dimensions not served": ([b"x"], {"dimensions": 100}, "dimensions: 100 is not served; choose one of 384, 256"),
    "dimensions zero": ([b"x"], {"dimensions": 0}, "dimensions: 0 is not served"),
    "dimensions over width": ([b"x"], {"dimensions": 385}, "dimensions: 385 is not served"),
    "unknown precision": ([b"x"], {"precision": "int4"}, "precision: must be one of float32, float16, int8"),
    "over max length": ([b"ok", LONG_TEXT.encode()], {"truncate": False}, "text[1]: 402 tokens exceed max_length 256"),
    "too many texts": ([b"x"] * 257, {}, "batch-size must be <= 256"),
    "unknown parameter": ([b"x"], {"temperature": 1}, "temperature: unknown parameter; accepted: dimensions"),
}


@pytest.fixture(scope="module")
def expected_good(grpc_url):
    client = grpcclient.InferenceServerClient(grpc_url)
    rows = [client.infer(MINILM, [text_input(grpcclient, [t.encode() for t in texts])]).as_numpy("embeddings")
            for texts in GOOD_TEXTS]  # fmt: skip
    client.close()
    return rows


def execution_and_request_counts(grpc_url) -> tuple[int, int]:
    client = grpcclient.InferenceServerClient(grpc_url)
    stats = client.get_inference_statistics(MINILM, as_json=True)["model_stats"][0]
    client.close()
    done = stats["inference_stats"]
    requests = sum(int(done[k].get("count", 0)) for k in ("success", "fail"))
    return int(stats.get("execution_count", 0)), requests


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_request_is_refused_and_its_batch_mates_are_served(grpc_url, expected_good, case):
    values, params, fragment = BAD_REQUESTS[case]

    async def send_together():
        client = grpcclient_aio.InferenceServerClient(grpc_url)
        try:
            calls = [client.infer(MINILM, [text_input(grpcclient_aio, values)], parameters=params)]
            for texts in GOOD_TEXTS * 3:
                calls.append(client.infer(MINILM, [text_input(grpcclient_aio, [t.encode() for t in texts])]))
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    bad, *good = asyncio.run(send_together())
    assert isinstance(bad, InferenceServerException), f"{case} was accepted"
    assert bad.status() == "StatusCode.INVALID_ARGUMENT"
    assert fragment in bad.message()
    for result, expected in zip(good, expected_good * 3):
        assert not isinstance(result, Exception), result
        np.testing.assert_allclose(result.as_numpy("embeddings"), expected, atol=1e-5)


def test_concurrent_requests_share_model_executions(grpc_url, expected_good):
    """The cases above only prove isolation if requests really are batched together."""
    executions_before, requests_before = execution_and_request_counts(grpc_url)

    async def burst():
        client = grpcclient_aio.InferenceServerClient(grpc_url)
        try:
            calls = [client.infer(MINILM, [text_input(grpcclient_aio, [b"fine", b""])])]
            calls += [client.infer(MINILM, [text_input(grpcclient_aio, [b"x" * 50])]) for _ in range(31)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(burst())
    assert isinstance(results[0], InferenceServerException)
    assert not any(isinstance(r, Exception) for r in results[1:])
    executions, requests = execution_and_request_counts(grpc_url)
    assert requests - requests_before == 32
    assert executions - executions_before < 32
