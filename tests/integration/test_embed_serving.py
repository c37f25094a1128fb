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
from tests.names import MINILM, MINILM_INT8, MINILM_LADDER, MINILM_LAYERS, TINY_DECODER

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


# -- depth (the ladder 2, 3, 4, 6) -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layered(grpc_url):
    with EmbedClient(grpc_url, MINILM_LAYERS) as c:
        yield c


@pytest.fixture(scope="module")
def cut_references(minilm_dir):
    """sentence-transformers with its encoder cut to its first k layers, for each k on the ladder."""
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    encoder, out = model[0].auto_model.encoder, {}
    full = encoder.layer
    for k in MINILM_LADDER:
        encoder.layer = full[:k]
        out[k] = model.encode(TEXTS, convert_to_numpy=True)
    encoder.layer = full
    return out


def test_info_lists_the_served_depths(layered, client):
    info = layered.info()
    assert info.served_layers == MINILM_LADDER and info.num_layers == 6 and info.fused
    assert client.info().served_layers == (6,)  # a one-graph export serves its full depth


@pytest.mark.parametrize("layers", MINILM_LADDER)
def test_served_depth_equals_sentence_transformers_cut_to_k_layers_at_every_dimension(layered, cut_references,
                                                                                      layers):  # fmt: skip
    for dims in layered.info().dimensions:
        served = layered.embed(TEXTS, dimensions=dims, layers=layers)
        assert rowwise_cosine(served, cut_references[layers][:, :dims]).min() >= 0.9999, dims


def test_full_depth_equals_todays_output(layered, client):
    today = client.embed(TEXTS)
    np.testing.assert_array_equal(client.embed(TEXTS, layers=6), today)  # the same graph, asked by name
    assert rowwise_cosine(layered.embed(TEXTS, layers=6), today).min() >= 0.99999
    assert rowwise_cosine(layered.embed(TEXTS), today).min() >= 0.99999


def test_mixed_depths_in_flight_together_each_get_their_own(grpc_url, layered):
    expected = {k: layered.embed(TEXTS[:8], layers=k, dimensions=128, precision="int8") for k in MINILM_LADDER}

    async def mixed():
        async with AsyncEmbedClient(grpc_url, MINILM_LAYERS) as c:
            calls = [c.embed(TEXTS[:8], layers=k, dimensions=128, precision="int8") for k in MINILM_LADDER * 3]
            return await asyncio.gather(*calls)

    for k, got in zip(MINILM_LADDER * 3, asyncio.run(mixed())):
        np.testing.assert_array_equal(got, expected[k])  # int8 with the ranges calibrated at that depth


def test_a_depth_off_the_ladder_is_invalid_argument_naming_it(grpc_url, layered, client):
    from tritonclient.grpc import InferenceServerClient, InferInput

    from nestrank.protocol.errors import ValidationError

    with pytest.raises(ValidationError, match=r"layers: 5 is not served; choose one of 2, 3, 4, 6 \(full depth 6\)"):
        layered.embed(["x"], layers=5)
    with pytest.raises(ValidationError, match="layers: 3 is not served; choose one of 6"):
        client.embed(["x"], layers=3)
    raw = InferenceServerClient(grpc_url)  # past the client's own check: the server refuses it the same way
    text = InferInput("text", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"x"]], dtype=object))
    with pytest.raises(Exception) as err:
        raw.infer(MINILM_LAYERS, [text], parameters={"layers": 5})
    assert "INVALID_ARGUMENT" in str(err.value.status()) and "choose one of 2, 3, 4, 6" in str(err.value)


def test_cli_embed_layers(grpc_url, capsys, layered):
    assert embed_cli.main(["--url", grpc_url, "--model", MINILM_LAYERS, "--layers", "3", "hello"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    np.testing.assert_allclose(row["embedding"], layered.embed(["hello"], layers=3)[0], rtol=1e-5, atol=1e-6)
