"""The HTTP front (api/) against the session's real Triton, called by the SDKs its users call it with: the `openai`
SDK, the `cohere` SDK (v1 and v2), langchain-openai, and TEI-shaped requests over httpx. The front runs in this
process on its own thread and loop; `test_http_serve.py` runs it as `nestrank serve` starts it."""

from __future__ import annotations

import asyncio
import base64
import shutil
import time

import httpx
import numpy as np
import pytest

from nestrank.api.cli import FrontThread
from nestrank.api.settings import FrontSettings
from nestrank.clients.embed import EmbedClient
from nestrank.clients.rerank import RerankClient
from tests.names import KALM, MINILM, MINILM_INT8, MINILM_LAYERS, TINY_DECODER, TINY_T5

pytestmark = pytest.mark.slow
KEY = "front-test-key-0123456789"
TEXTS = ["What is Triton?", "A GPU inference server.", "Ünïcödé text, too.", "short", "a " * 400]
QUERY = "Which planet is known as the Red Planet?"
DOCUMENTS = ["Venus is the second planet from the Sun.", "Mars is often called the Red Planet.",
             "Jupiter is the largest planet.", "Mars has two small moons, Phobos and Deimos."]  # fmt: skip


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def front(server):
    settings = FrontSettings(triton_urls=(server.config.grpc_url,), port=0, api_key=KEY,
                             repository=server.config.model_repository, max_body_bytes=1 << 20)  # fmt: skip
    with FrontThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def http(front):
    with httpx.Client(base_url=front.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def openai_client(front):
    from openai import OpenAI

    return OpenAI(base_url=f"{front.url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def grpc_embed(grpc_url):
    with EmbedClient(grpc_url, MINILM) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_rerank(grpc_url):
    with RerankClient(grpc_url, KALM) as client:
        yield client


# -- OpenAI ------------------------------------------------------------------------------------------------------


def test_the_openai_sdk_default_is_base64_and_equals_grpc_and_sentence_transformers(openai_client, grpc_embed,
                                                                                     minilm_dir):  # fmt: skip
    from sentence_transformers import SentenceTransformer

    raw = openai_client.embeddings.with_raw_response.create(model=MINILM, input=TEXTS)
    assert raw.http_request.read() and b'"encoding_format":"base64"' in raw.http_request.read().replace(b" ", b"")
    assert all(isinstance(item["embedding"], str) for item in raw.http_response.json()["data"])  # base64 on the wire
    response = raw.parse()
    assert response.model == MINILM and [d.index for d in response.data] == list(range(len(TEXTS)))
    served = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert served.shape == (len(TEXTS), 384)
    assert cosines(served, grpc_embed.embed(TEXTS)).min() >= 0.99999
    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert cosines(served, reference).min() >= 0.9999  # the export's fp32 parity gate


def test_float_and_dimensions(openai_client, grpc_embed):
    response = openai_client.embeddings.create(model=MINILM, input="What is Triton?", dimensions=128,
                                               encoding_format="float")  # fmt: skip
    (item,) = response.data
    assert isinstance(item.embedding, list) and len(item.embedding) == 128
    expected = grpc_embed.embed(["What is Triton?"], dimensions=128)
    assert cosines([item.embedding], expected).min() >= 0.99999
    assert abs(np.linalg.norm(item.embedding) - 1) < 1e-5  # re-normalised after the Matryoshka cut


def test_2048_inputs_are_split_by_the_front_and_usage_counts_real_tokens(openai_client, grpc_embed, minilm_dir):
    from transformers import AutoTokenizer

    texts = [f"text number {i}: " + "word " * (i % 5) for i in range(2048)]
    response = openai_client.embeddings.create(model=MINILM, input=texts)
    served = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert served.shape == (2048, 384)  # over the model's batch limit (256): the front split it
    assert cosines(served, grpc_embed.embed(texts)).min() >= 0.99999
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=256)["input_ids"])
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens


def test_more_than_2048_inputs_are_refused_naming_the_limit(http):
    response = http.post("/v1/embeddings", json={"model": MINILM, "input": ["x"] * 2049})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "input: 2049 inputs exceed the limit of 2048 per request"


def test_precision_extensions_come_back_as_integers_or_their_bytes(openai_client, grpc_url):
    with EmbedClient(grpc_url, MINILM_INT8) as client:
        int8 = client.embed(TEXTS[:2], precision="int8")
        packed = client.embed(TEXTS[:2], precision="ubinary")
    as_ints = openai_client.embeddings.create(model=MINILM_INT8, input=TEXTS[:2], encoding_format="float",
                                              extra_body={"precision": "int8"})  # fmt: skip
    assert np.array_equal(np.array([d.embedding for d in as_ints.data]), int8)
    raw = openai_client.embeddings.with_raw_response.create(model=MINILM_INT8, input=TEXTS[:2],
                                                            encoding_format="base64",
                                                            extra_body={"precision": "ubinary"})  # fmt: skip
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), np.uint8) for d in raw.http_response.json()["data"]]
    assert np.array_equal(np.stack(rows), packed)


def test_models_list_and_retrieve(openai_client):
    listed = {m.id for m in openai_client.models.list()}
    assert {MINILM, MINILM_INT8, TINY_DECODER, KALM, TINY_T5} <= listed
    assert not any(name.endswith(("_encode", "_score")) for name in listed)  # a reranker's parts are not models
    assert openai_client.models.retrieve(MINILM).id == MINILM


def test_openai_sdk_errors(openai_client):
    import openai

    with pytest.raises(openai.NotFoundError) as err:
        openai_client.embeddings.create(model="no-such-model", input="x")
    assert err.value.body["code"] == "model_not_found" and MINILM in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.embeddings.create(model=MINILM, input="x", dimensions=100)
    assert err.value.body == {
        "message": "dimensions: 100 is not served; choose one of 384, 256, 128, 64, 32 (width 384)",
        "type": "invalid_request_error",
        "param": "dimensions",
        "code": None,
    }
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.embeddings.create(model=KALM, input="x")  # a reranker is no embedder
    assert f"'{KALM}' is a rerank model" in err.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        openai_client.with_options(api_key="wrong-key").embeddings.create(model=MINILM, input="x")


# -- langchain-openai --------------------------------------------------------------------------------------------


def test_langchain_openai_works_with_check_embedding_ctx_length_false(front, grpc_embed):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=MINILM, base_url=f"{front.url}/v1", api_key=KEY,
                                  check_embedding_ctx_length=False)  # fmt: skip
    assert cosines(embeddings.embed_documents(TEXTS), grpc_embed.embed(TEXTS)).min() >= 0.99999
    assert cosines([embeddings.embed_query(TEXTS[0])], grpc_embed.embed(TEXTS[:1])).min() >= 0.99999


def test_langchain_openai_default_sends_token_ids_and_gets_the_clear_400(front, monkeypatch):
    """LangChain's default tokenizes with tiktoken and sends the ids. tiktoken downloads its encodings, and this
    machine has no network: a byte-level tiktoken encoding stands in (the ids are what matters: int[][])."""
    import openai
    import tiktoken
    from langchain_openai import OpenAIEmbeddings

    byte_level = tiktoken.Encoding("bytes", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                                   special_tokens={})  # fmt: skip
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: byte_level)
    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda name: byte_level)
    embeddings = OpenAIEmbeddings(model=MINILM, base_url=f"{front.url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        embeddings.embed_documents(TEXTS[:2])
    assert "check_embedding_ctx_length=False" in err.value.body["message"] and err.value.body["param"] == "input"


# -- Cohere ------------------------------------------------------------------------------------------------------


def test_cohere_v2_rerank_equals_grpc(front, grpc_rerank):
    import cohere

    client = cohere.ClientV2(api_key=KEY, base_url=front.url)
    response = client.rerank(model=KALM, query=QUERY, documents=DOCUMENTS, top_n=3)
    expected = grpc_rerank.rerank(QUERY, DOCUMENTS, top_n=3)
    assert [r.index for r in response.results] == [r.index for r in expected]
    assert np.allclose([r.relevance_score for r in response.results], [r.score for r in expected], atol=1e-6)
    assert response.id and response.meta.api_version.version == "2"
    assert response.meta.billed_units.search_units == 1


def test_cohere_v1_rerank_returns_documents_and_equals_grpc(front, grpc_rerank):
    import cohere

    client = cohere.Client(api_key=KEY, base_url=front.url)
    response = client.rerank(model=KALM, query=QUERY, documents=DOCUMENTS, return_documents=True)
    expected = grpc_rerank.rerank(QUERY, DOCUMENTS)
    assert [r.index for r in response.results] == [r.index for r in expected]
    assert np.allclose([r.relevance_score for r in response.results], [r.score for r in expected], atol=1e-6)
    assert [r.document.text for r in response.results] == [DOCUMENTS[r.index] for r in expected]
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_jina_style_objects_instruction_and_ratio(http, grpc_rerank):
    body = {"model": KALM, "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "return_documents": True,
            "instruction": "Find the planet described.", "compression_ratio": 8}  # fmt: skip
    response = http.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    expected = grpc_rerank.rerank(QUERY, DOCUMENTS, instruction="Find the planet described.", compression_ratio=8)
    results = response.json()["results"]
    assert [r["index"] for r in results] == [r.index for r in expected]
    assert np.allclose([r["relevance_score"] for r in results], [r.score for r in expected], atol=1e-6)
    assert results[0]["document"] == {"text": DOCUMENTS[expected[0].index]}


def test_rerank_by_stored_passage_ids(http, grpc_rerank):
    ids = [f"front-doc-{i}" for i in range(len(DOCUMENTS))]
    grpc_rerank.index(DOCUMENTS, ids)
    by_text = http.post("/v2/rerank", json={"model": KALM, "query": QUERY, "documents": DOCUMENTS}).json()["results"]
    by_id = http.post("/v2/rerank", json={"model": KALM, "query": QUERY, "passage_ids": ids}).json()["results"]
    assert [r["index"] for r in by_id] == [r["index"] for r in by_text]
    assert np.allclose([r["relevance_score"] for r in by_id], [r["relevance_score"] for r in by_text], atol=1e-6)
    missing = http.post("/v1/rerank", json={"model": KALM, "query": QUERY, "passage_ids": ["front-doc-0", "nope"]})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


# -- TEI ---------------------------------------------------------------------------------------------------------


def test_tei_embed_equals_grpc(http, grpc_embed):
    response = http.post("/embed", json={"inputs": TEXTS, "truncation_direction": "Left"})
    assert response.status_code == 200
    expected = grpc_embed.embed(TEXTS, truncation_direction="left")
    assert cosines(np.array(response.json()), expected).min() >= 0.99999
    single = http.post("/embed", json={"inputs": "one text", "dimensions": 64, "normalize": False}).json()
    assert np.array(single).shape == (1, 64)
    assert cosines(single, grpc_embed.embed(["one text"], dimensions=64, normalize=False)).min() >= 0.99999


def test_layers_on_openai_and_tei_equal_grpc(http, grpc_url, grpc_embed):
    with EmbedClient(grpc_url, MINILM_LAYERS) as layered:
        expected = layered.embed(TEXTS, layers=3, dimensions=128)
    body = {"model": MINILM_LAYERS, "input": TEXTS, "layers": 3, "dimensions": 128, "encoding_format": "float"}
    response = http.post("/v1/embeddings", json=body)
    assert response.status_code == 200
    assert cosines([d["embedding"] for d in response.json()["data"]], expected).min() >= 0.99999
    bad = http.post("/v1/embeddings", json={**body, "layers": 5})
    assert bad.status_code == 400 and "choose one of 2, 3, 4, 6" in bad.json()["error"]["message"]
    tei = http.post("/embed", json={"inputs": TEXTS, "layers": 6})  # the default embedder: its full depth only
    assert tei.status_code == 200
    assert cosines(np.array(tei.json()), grpc_embed.embed(TEXTS)).min() >= 0.99999
    assert http.get("/info").json()["layers"] == [6]
    off = http.post("/embed", json={"inputs": TEXTS, "layers": 3})
    assert off.status_code == 413 and off.json()["error"] == "layers: 3 is not served; choose one of 6 (full depth 6)"


def test_tei_rerank_scores_raw_scores_and_text(http, grpc_rerank):
    expected = grpc_rerank.rerank(QUERY, DOCUMENTS)  # the default reranker is the first by name: kalm-shaped
    ranks = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()
    assert [r["index"] for r in ranks] == [r.index for r in expected]
    assert np.allclose([r["score"] for r in ranks], [r.score for r in expected], atol=1e-6)
    assert [r["text"] for r in ranks] == [DOCUMENTS[r.index] for r in expected]
    raw = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    assert np.allclose(1 / (1 + np.exp(-np.array([r["score"] for r in raw]))), [r.score for r in expected],
                       atol=1e-6)  # fmt: skip
    assert "text" not in raw[0]


def test_tei_info_and_errors(http):
    info = http.get("/info").json()
    assert info["model_id"] == MINILM and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 256 and info["max_client_batch_size"] == 2048 and info["auto_truncate"]
    assert info["max_batch_tokens"] == 16384 and info["limits"]["max_batch_tokens"] == 16384  # the scheduler's
    assert info["limits"]["max_queue_wait_s"] == 60 and info["limits"]["max_run_tokens"] == 8192
    bad = http.post("/embed", json={"inputs": ["ok", ""]})
    assert bad.status_code == 413  # TEI answers a bad request 413
    assert bad.json() == {"error": "inputs[1]: empty string; send at least one character", "error_type": "validation"}
    ids = http.post("/embed", json={"inputs": [[101, 2023, 102]]})
    assert ids.status_code == 413 and ids.json()["error"].startswith("inputs: token ids")
    long = http.post("/embed", json={"inputs": "word " * 2000, "truncate": False})
    assert long.status_code == 413 and "max_length 256" in long.json()["error"]


def test_tei_ignores_the_fields_it_does_not_know_as_rerankers_tei_provider_sends_them(http, grpc_rerank):
    expected = grpc_rerank.rerank(QUERY, DOCUMENTS)
    body = {"query": QUERY, "texts": DOCUMENTS, "model": "any", "top_n": 2, "raw_scores": False}  # rerankers' TEI
    ranks = http.post("/rerank", json=body).json()
    assert [r["index"] for r in ranks] == [r.index for r in expected]  # TEI has no top_n: every text, ranked
    assert http.post("/embed", json={"inputs": "x", "model": "any", "user": "u"}).status_code == 200


def test_tei_root_and_sagemaker_routes_answer_by_the_bodys_shape(http, grpc_embed, grpc_rerank):
    expected = grpc_embed.embed(TEXTS[:2])
    for path in ("/", "/invocations"):
        vectors = np.array(http.post(path, json={"inputs": TEXTS[:2]}).json())
        assert cosines(vectors, expected).min() >= 0.99999
        ranks = http.post(path, json={"query": QUERY, "texts": DOCUMENTS}).json()
        assert [r["index"] for r in ranks] == [r.index for r in grpc_rerank.rerank(QUERY, DOCUMENTS)]
    similar = http.post("/", json={"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[:3]}}).json()
    assert np.allclose(similar, grpc_embed.embed(TEXTS[:3]) @ expected[0], atol=1e-5) and similar[0] > 0.9999
    assert http.get("/").status_code == http.get("/ping").status_code == 200  # TEI's and SageMaker's health
    bad = http.post("/", json={"texts": DOCUMENTS})
    assert bad.status_code == 413 and bad.json()["error"].startswith("body: send an /embed body")


def test_tei_tokenize_and_decode_use_the_embedders_tokenizer(http, minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    text = "Ünïcödé text, too."
    (tokens,) = http.post("/tokenize", json={"inputs": text}).json()
    assert [t["id"] for t in tokens] == tokenizer(text)["input_ids"]
    assert tokens[0] == {"id": tokenizer.cls_token_id, "text": "[CLS]", "special": True, "start": None, "stop": None}
    word = tokens[1]  # TEI's offsets are bytes of the text
    assert text.encode()[word["start"] : word["stop"]].decode() == word["text"] and not word["special"]
    ids = [t["id"] for t in tokens]
    assert http.post("/decode", json={"ids": ids}).json() == [tokenizer.decode(ids, skip_special_tokens=True)]
    bad = http.post("/decode", json={"ids": [[101, 10**9]]})
    assert bad.status_code == 413 and bad.json()["error"].startswith("ids[0]: 1000000000 is not a token id")


@pytest.mark.parametrize("path", ["/embed_all", "/embed_sparse", "/predict"])
def test_tei_routes_these_models_cannot_serve_answer_424_saying_why(http, path):
    response = http.post(path, json={"inputs": "x"})
    assert response.status_code == 424 and response.json()["error_type"] == "backend"
    assert response.json()["error"].startswith(f"{path}: ")


def test_huggingface_hub_inference_client_on_the_front(front, grpc_embed, monkeypatch):
    import huggingface_hub
    from huggingface_hub import InferenceClient

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests' guard against the hub

    client = InferenceClient(model=front.url, token=KEY)
    vectors = client.feature_extraction(TEXTS[:3])
    assert cosines(vectors, grpc_embed.embed(TEXTS[:3])).min() >= 0.99999
    similar = client.sentence_similarity(TEXTS[0], TEXTS[:3])
    assert np.allclose(similar, grpc_embed.embed(TEXTS[:3]) @ grpc_embed.embed(TEXTS[:1])[0], atol=1e-5)


# -- NIM ---------------------------------------------------------------------------------------------------------


def test_nim_ranking_logits_and_embeddings_truncate_and_input_type(http, grpc_rerank, grpc_embed):
    expected = grpc_rerank.rerank(QUERY, DOCUMENTS)
    body = {"model": KALM, "query": {"text": QUERY}, "passages": [{"text": d} for d in DOCUMENTS], "truncate": "END"}
    rankings = http.post("/v1/ranking", json=body).json()["rankings"]
    assert [r["index"] for r in rankings] == [r.index for r in expected]
    assert np.allclose(1 / (1 + np.exp(-np.array([r["logit"] for r in rankings]))), [r.score for r in expected],
                       atol=1e-6)  # fmt: skip
    refused = http.post("/v1/ranking", json={**body, "truncate": "NONE"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "truncate"
    nim = {"model": MINILM, "input": TEXTS, "input_type": "query", "truncate": "START", "encoding_format": "float"}
    vectors = [d["embedding"] for d in http.post("/v1/embeddings", json=nim).json()["data"]]
    expected = grpc_embed.embed(TEXTS, input_type="query", truncation_direction="left")
    assert cosines(vectors, expected).min() >= 0.99999
    refused = http.post("/v1/embeddings", json={**nim, "truncate": "NONE"})  # TEXTS[4] is over 256 tokens
    assert refused.status_code == 400 and "max_length 256" in refused.json()["error"]["message"]
    assert http.get("/v1/health/ready").json()["message"] == "Service is ready."


# -- Cohere embed ------------------------------------------------------------------------------------------------


def inferences(grpc_url: str, model: str) -> int:
    """Texts Triton has run through `model` (its statistics: readable without the admin key)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(grpc_url) as client:
        return int(client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_count"])


def test_cohere_embed_every_type_comes_from_one_pass_and_equals_grpc(front, grpc_url, grpc_embed):
    import cohere

    client = cohere.ClientV2(api_key=KEY, base_url=front.url)
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    before = inferences(grpc_url, MINILM)
    response = client.embed(model=MINILM, texts=TEXTS, input_type="search_query", embedding_types=types,
                            output_dimension=128)  # fmt: skip
    assert inferences(grpc_url, MINILM) - before == len(TEXTS)  # one forward pass per text, for six types
    with EmbedClient(grpc_url, MINILM) as grpc:
        for kind, precision in [("int8", "int8"), ("uint8", "uint8"), ("binary", "binary"), ("ubinary", "ubinary")]:
            expected = grpc.embed(TEXTS, precision=precision, dimensions=128, input_type="query")
            assert np.array_equal(np.array(getattr(response.embeddings, kind)), expected), kind
        floats = grpc.embed(TEXTS, dimensions=128, input_type="query")
    assert cosines(response.embeddings.float_, floats).min() >= 0.99999
    decoded = np.stack([np.frombuffer(base64.b64decode(row), "<f4") for row in response.embeddings.base64])
    assert np.array_equal(decoded, np.array(response.embeddings.float_, np.float32))
    assert response.meta.billed_units.input_tokens > 0 and response.texts == TEXTS
    v1 = cohere.Client(api_key=KEY, base_url=front.url).embed(texts=TEXTS[:2], model=MINILM)  # the v1 SDK's default
    assert v1.response_type == "embeddings_floats"
    assert cosines(v1.embeddings, grpc_embed.embed(TEXTS[:2])).min() >= 0.99999


# -- errors, auth, limits ----------------------------------------------------------------------------------------


def test_auth_health_and_readiness(front):
    assert httpx.get(f"{front.url}/health").status_code == 200  # open, for probes
    assert httpx.get(f"{front.url}/ready").status_code == 200
    assert httpx.get(f"{front.url}/openapi.json").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        response = httpx.post(f"{front.url}/v1/embeddings", json={"model": MINILM, "input": "x"}, headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "invalid_api_key"
    tei = httpx.get(f"{front.url}/info")
    assert tei.status_code == 401 and tei.json()["error_type"] == "unauthorized"


def test_bodies_over_the_limit_are_refused_before_they_are_read(front, http):
    big = b'{"model": "x", "input": "' + b"a" * (1 << 20) + b'"}'
    declared = http.post("/v1/embeddings", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 64 << 10):
            yield big[start : start + 64 << 10]

    chunked = http.post("/v1/embeddings", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]["message"]
    tei = http.post("/embed", content=big, headers={"Content-Type": "application/json"})
    assert tei.status_code == 413 and tei.json()["error_type"] == "validation"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": MINILM, "input": ""}, 400, "input"),
    ({"model": MINILM, "input": ["a", 3]}, 400, "input"),
    ({"model": MINILM, "input": "a", "encoding_format": "hex"}, 400, "encoding_format"),
    ({"model": MINILM, "input": "a", "precision": "int4"}, 400, "precision"),
    ({"model": MINILM, "input": "a", "input_type": "poem"}, 400, "input_type"),
    ({"model": MINILM, "input": "a", "dimensionz": 3}, 400, "dimensionz"),
    ({"input": "a"}, 400, "model"),
    ({"model": "nope", "input": "a"}, 404, "model"),
])  # fmt: skip
def test_bad_embedding_requests_name_the_field(http, body, status, param):
    response = http.post("/v1/embeddings", json=body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param and response.json()["error"]["message"].startswith(param)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v2/rerank", {"model": KALM, "query": QUERY}, "documents"),
    ("/v2/rerank", {"model": KALM, "query": " ", "documents": ["a"]}, "query"),
    ("/v2/rerank", {"model": KALM, "query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
    ("/v2/rerank", {"model": KALM, "query": QUERY, "documents": ["a"], "compression_ratio": 3}, "compression_ratio"),
    ("/v2/rerank", {"model": KALM, "query": QUERY, "documents": ["a"], "max_tokens_per_doc": 10}, "max_tokens_per_doc"),
    ("/v2/rerank", {"model": KALM, "query": QUERY, "documents": ["a"] * 1001}, "documents"),
    ("/v1/rerank", {"model": KALM, "query": QUERY, "documents": [{"title": "a"}]}, "documents[0]"),
    ("/v1/rerank", {"model": MINILM, "query": QUERY, "documents": ["a"]}, "model"),
])  # fmt: skip
def test_bad_rerank_requests_name_the_field_and_the_limit(http, path, body, field):
    response = http.post(path, json=body)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["message"].startswith(field)


@pytest.fixture
def small_queue(server):
    """The tiny decoder with a queue of one request, loaded into the session's server for one test."""
    from nestrank.export.triton_config import read_config, write_config

    name = "front-small-queue"
    target = server.served_repository / name
    shutil.copytree(server.served_repository / TINY_DECODER, target, symlinks=True)
    config = read_config(target)
    config.name = name
    config.dynamic_batching.default_queue_policy.max_queue_size = 1
    write_config(config, target)
    assert server.admin("POST", f"/v2/repository/models/{name}/load") == 200
    yield name
    server.admin("POST", f"/v2/repository/models/{name}/unload")
    shutil.rmtree(target)


def test_a_flooded_queue_answers_429_with_retry_after(front, small_queue):
    async def flood():
        async with httpx.AsyncClient(base_url=front.url, headers={"Authorization": f"Bearer {KEY}"},
                                     timeout=120) as client:  # fmt: skip
            body = {"model": small_queue, "input": ["the quick brown fox jumps over the lazy dog " * 20] * 16}
            return await asyncio.gather(*(client.post("/v1/embeddings", json=body) for _ in range(24)))

    responses = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and statuses.count(429) >= 1 and statuses.count(200) >= 1, statuses
    shed = next(r for r in responses if r.status_code == 429)
    assert shed.headers["Retry-After"] == "1"
    assert shed.json()["error"]["type"] == "rate_limit_error" and "queue" in shed.json()["error"]["message"]


def test_no_triton_answers_503(server):
    from nestrank.serving.launcher.server import free_ports

    (port,) = free_ports(1)  # nothing listens there: as a killed Triton (test_http_serve.py kills a real one)
    settings = FrontSettings(triton_urls=(f"127.0.0.1:{port}",), port=0, models=(MINILM,))
    with FrontThread(settings) as dead:
        started = time.monotonic()
        response = httpx.post(f"{dead.url}/v1/embeddings", json={"model": MINILM, "input": "x"}, timeout=60)
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 10
        assert httpx.get(f"{dead.url}/ready").status_code == 503
        assert httpx.get(f"{dead.url}/health").json() == {"error": "no Triton endpoint is live", "error_type":
                                                          "unhealthy"}  # fmt: skip


# -- the spec, fuzzed --------------------------------------------------------------------------------------------


def test_every_route_of_the_served_spec_survives_a_fuzz(front):
    """schemathesis generates requests from the served OpenAPI spec, fitting it and not: none answers 5xx, and the
    front is still ready after."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(f"{front.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 27  # every route: OpenAI 4, Cohere 4, TEI 12, NIM 1, health 6
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                      database=None)  # fmt: skip
            @given(operation.as_strategy(mode, headers={"Authorization": f"Bearer {KEY}"}))
            def run(case):
                response = case.call(timeout=120)
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path} {case.body!r:.200} -> {response.status_code} "
                                    f"{response.text[:200]}")  # fmt: skip

            try:
                run()
            except Unsatisfiable:  # nothing to get wrong: a route that reads neither parameters nor a body
                assert mode == GenerationMode.NEGATIVE and not operation.body
    assert not failures, "\n".join(failures[:10])
    assert httpx.get(f"{front.url}/ready").status_code == 200


def test_the_bench_http_row_measures_the_same_work_as_grpc(server, grpc_url):
    """`nestrank bench compare`'s HTTP row: the front as its own process, the same batches, the same outputs."""
    from nestrank.bench.http_front import FrontProcess, grpc_embed_run, http_embed_run

    batches = [TEXTS[:3], TEXTS[3:], ["x y"] * 4, ["short"] * 2, ["z"]]
    with FrontProcess(grpc_url, server.config.model_repository) as process:
        http_result, http_rows = http_embed_run(process.url, MINILM, batches, 2)
    grpc_result, grpc_rows = grpc_embed_run(grpc_url, MINILM, batches, 2, 32)
    assert len(http_result.latencies_s) == len(grpc_result.latencies_s) == len(batches)
    assert http_rows.shape == grpc_rows.shape == (sum(map(len, batches)), 384)
    assert cosines(http_rows, grpc_rows).min() >= 0.99999


# -- traffic classes and cancellation at the front -----------------------------------------------------------------


def test_priority_reaches_the_schedulers_as_a_traffic_class(http, server):
    """Cohere's `priority` (0 first) and the traffic classes' names, on the rerank and embed routes: a bulk request's
    work is queued as bulk in `_encode` and the embed scheduler; a negative or unknown priority is a 400."""
    from nestrank.bench.prometheus_text import samples

    def bulk(model):
        return sum(s.value for s in samples(server.config.metrics_url)
                   if s.labels.get("model") == model and s.name.endswith("_bulk"))  # fmt: skip

    before = {m: bulk(m) for m in (f"{TINY_T5}_encode", MINILM)}
    stamp = time.time_ns()
    body = {"model": TINY_T5, "query": QUERY, "documents": [f"{d} ({stamp})" for d in DOCUMENTS], "priority": 1}
    assert http.post("/v2/rerank", json=body).status_code == 200
    assert http.post("/v1/embeddings", json={"model": MINILM, "input": ["bulk"], "priority": "bulk"}).status_code == 200
    assert bulk(f"{TINY_T5}_encode") > before[f"{TINY_T5}_encode"] and bulk(MINILM) > before[MINILM]
    assert http.post("/v2/rerank", json={**body, "priority": 0}).status_code == 200
    refused = http.post("/v2/rerank", json={**body, "priority": -1})
    assert refused.status_code == 400 and "priority: must be >= 0" in refused.text
    assert http.post("/embed", json={"inputs": "x", "priority": "urgent"}).status_code in (400, 413, 422)


def test_a_caller_that_disconnects_cancels_its_work(front, server):
    """A rerank of 600 new documents whose HTTP caller gives up after 0.3 s: the front cancels its gRPC call, and
    the rerank model drops the encode chunks it left queued (the `_encode` scheduler's cancellations)."""
    from nestrank.bench.prometheus_text import samples

    def cancelled():
        return sum(s.value for s in samples(server.config.metrics_url) if s.name == "nestrank_rerank_encode_cancelled"
                   and s.labels.get("model") == f"{KALM}_encode")  # fmt: skip

    before = cancelled()
    stamp = time.time_ns()
    body = {"model": KALM, "query": QUERY, "documents": [f"passage {k} of {stamp}: " + "read the file " * 20
                                                         for k in range(600)]}  # fmt: skip
    with httpx.Client(base_url=front.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=0.3) as impatient:
        with pytest.raises(httpx.TimeoutException):
            impatient.post("/v2/rerank", json=body)
    deadline = time.monotonic() + 30
    while cancelled() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cancelled() > before
