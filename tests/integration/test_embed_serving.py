"""The embed model served by a real tritonserver, called over real gRPC."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer, quantize_embeddings

from nestrank.clients import cli as embed_cli
from nestrank.clients.embed import AsyncEmbedClient, EmbedClient
from nestrank.clients.transport import RetryPolicy
from nestrank.export.triton_config import read_config, string_parameters
from nestrank.protocol.embedding import EmbedderConfig
from nestrank.serving.pipeline.embedder import Embedder
from nestrank.texts import PARITY_TEXTS, realistic_texts
from tests.names import MINILM, MINILM_INT8, TINY_DECODER

pytestmark = pytest.mark.slow

TEXTS = list(PARITY_TEXTS) + realistic_texts(23, seed=3)


@pytest.fixture(scope="module")
def client(grpc_url):
    with EmbedClient(grpc_url, MINILM) as c:
        yield c


@pytest.fixture(scope="module")
def reference(minilm_dir):
    return SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS, convert_to_numpy=True)


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_info(client):
    info = client.info()
    assert (info.width, info.max_length, info.max_batch_size) == (384, 256, 256)
    assert info.dimensions == (384, 256, 128, 64, 32)
    assert "ubinary" in info.precisions


@pytest.mark.parametrize("dims", [384, 256, 128, 64, 32])
def test_served_minilm_equals_sentence_transformers_at_every_dimension(client, reference, dims):
    served = client.embed(TEXTS, dimensions=dims)
    assert served.shape == (len(TEXTS), dims) and served.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)
    assert rowwise_cosine(served, reference[:, :dims]).min() >= 0.9999


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary", "float16"])
def test_each_precision_follows_quantize_embeddings(client, repository, precision):
    dims = 128
    full = client.embed(TEXTS, dimensions=dims)
    served = client.embed(TEXTS, dimensions=dims, precision=precision)
    if precision == "float16":
        np.testing.assert_array_equal(served, full.astype(np.float16))
        return
    with np.load(repository / MINILM / "1" / "calibration.npz") as stored:
        ranges = stored[str(dims)]
    expected = quantize_embeddings(full, precision, ranges=ranges)
    assert served.dtype == expected.dtype
    np.testing.assert_array_equal(served, expected)


def test_normalize_false_returns_the_raw_pooled_vector(client):
    raw = client.embed(TEXTS[:4], normalize=False, dimensions=64)
    unit = client.embed(TEXTS[:4], dimensions=64)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(rowwise_cosine(raw, unit), 1.0, rtol=1e-5)


def test_truncation_direction(client):
    head = "Cooking pasta: boil salted water, add the noodles and stir. " * 30
    tail = "Orbital mechanics: a satellite trades altitude for speed. " * 30
    right, left = (client.embed([head + tail], truncation_direction=d)[0] for d in ("right", "left"))
    head_only, tail_only = client.embed([head, tail])
    assert float(right @ head_only) > 0.95 and float(left @ tail_only) > 0.95
    assert float(right @ left) < 0.8


def test_a_thousand_texts_of_random_lengths_come_back_in_order(client, repository):
    texts = realistic_texts(1000, seed=11)
    served = client.embed(texts, batch_size=32, concurrency=8)
    config = EmbedderConfig.from_parameters(string_parameters(read_config(repository / MINILM)))
    in_process = Embedder.load(repository / MINILM / "1", config).embed(texts)
    assert rowwise_cosine(served, in_process).min() >= 0.99999


def test_async_client_matches_sync(grpc_url, client):
    async def run():
        async with AsyncEmbedClient(grpc_url, MINILM, concurrency=4) as aclient:
            return await aclient.embed(TEXTS, dimensions=128, batch_size=5)

    np.testing.assert_allclose(asyncio.run(run()), client.embed(TEXTS, dimensions=128), atol=1e-6)


def test_failover_to_a_live_endpoint(grpc_url):
    retry = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)
    with EmbedClient(["127.0.0.1:1", grpc_url], MINILM, retry=retry) as c:
        out = c.embed(["hello", "world", "again"], batch_size=1)
    assert out.shape == (3, 384)


def test_int8_weights_stay_close_to_fp32(grpc_url, client):
    with EmbedClient(grpc_url, MINILM_INT8) as c8:
        int8 = c8.embed(TEXTS)
    assert rowwise_cosine(int8, client.embed(TEXTS)).mean() >= 0.98


def test_decoder_family_serves_and_matches_its_reference(grpc_url, tiny_decoder_dir):
    reference = SentenceTransformer(str(tiny_decoder_dir), device="cpu")
    with EmbedClient(grpc_url, TINY_DECODER) as c:
        assert c.info().config.pooling == "lasttoken"
        served = c.embed(TEXTS)
        served_query = c.embed(TEXTS, input_type="query")
    assert rowwise_cosine(served, reference.encode(TEXTS)).min() >= 0.9999
    assert rowwise_cosine(served_query, reference.encode(TEXTS, prompt_name="query")).min() >= 0.9999
    assert rowwise_cosine(served_query, served).min() < 0.999  # the prompt was applied


def test_cli_embed(grpc_url, capsys):
    assert embed_cli.main(["hello", "world", "--url", grpc_url, "--dimensions", "32"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in lines] == ["hello", "world"]
    assert len(lines[0]["embedding"]) == 32
    assert embed_cli.main(["hello", "--url", grpc_url, "--dimensions", "33"]) == 1
    assert "dimensions: 33 is not served" in capsys.readouterr().err


def test_every_generated_config_parses(repository):
    from nestrank.protocol.embedding import EMBEDDING_OUTPUTS
    from nestrank.protocol.reranking import RerankerConfig

    kinds = set()
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        config = read_config(model_dir)
        assert config.name == model_dir.name
        assert (model_dir / "1" / "model.py").exists()
        outputs = {t.name for t in config.output}
        kind = EmbedderConfig if outputs == set(EMBEDDING_OUTPUTS.values()) else RerankerConfig
        kind.from_parameters(string_parameters(config))  # validated on construction
        kinds.add(kind)
    assert kinds == {EmbedderConfig, RerankerConfig}
