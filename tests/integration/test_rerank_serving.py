"""FBNL reranking served by a real tritonserver: the official KaLM scores (tests/official_kalm.py), passage reuse,
clients (bad input: test_bad_input.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.request

import numpy as np
import pytest
import torch

from nestrank.clients import cli
from nestrank.clients.rerank import AsyncRerankClient, PassageStates, RerankClient
from nestrank.export.reference import reference_scores
from nestrank.export.reranker import load_checkpoint, load_tokenizer
from nestrank.protocol.errors import ValidationError
from nestrank.texts import realistic_texts
from tests.names import KALM, TINY_T5

pytestmark = pytest.mark.slow

QUERY = "how do I read a file"
DOCS = ["ok", "open the file and read each line", "the weather is nice today", *realistic_texts(7, seed=5),
        "an image ends here <end_of_image> and the text goes on", " ".join(realistic_texts(60, seed=6))[:3000],
        " ".join(realistic_texts(120, seed=7))]  # fmt: skip  # past the 512-token window; past the 1024-token cut


@pytest.fixture(scope="module")
def client(grpc_url):
    with RerankClient(grpc_url, KALM) as c:
        yield c


def served(ranked) -> np.ndarray:
    return np.array([r.score for r in sorted(ranked, key=lambda r: r.index)])


@pytest.mark.parametrize("ratio", [1, 2, 4, 8, 16, 32])
def test_served_scores_equal_the_official_kalm_scores_at_every_ratio(client, official_kalm, ratio):
    expected = official_kalm.scores(QUERY, DOCS, ratio, stored_as=torch.float16)  # passage states held in float16
    ranked = client.rerank(QUERY, DOCS, compression_ratio=ratio)
    assert sorted(r.index for r in ranked) == list(range(len(DOCS)))
    assert np.abs(served(ranked) - expected).max() <= 1e-4
    assert np.abs(served(ranked) - official_kalm.scores(QUERY, DOCS, ratio)).max() <= 1e-3  # what float16 costs
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)


@pytest.mark.parametrize("ratio", [1, 4, 32])
def test_a_query_past_512_tokens_and_a_custom_instruction_score_officially(client, official_kalm, ratio):
    long_query = " ".join(realistic_texts(40, seed=11))
    assert len(official_kalm.tokenizer(long_query, add_special_tokens=False)["input_ids"]) > 512
    instruction = "Given a question about Python, retrieve the passages of its documentation."
    docs = DOCS[:4]
    ranked = client.rerank(long_query, docs, compression_ratio=ratio)
    expected = official_kalm.scores(long_query, docs, ratio, stored_as=torch.float16)
    assert np.abs(served(ranked) - expected).max() <= 1e-4
    ranked = client.rerank(QUERY, docs, compression_ratio=ratio, instruction=instruction)
    expected = official_kalm.scores(QUERY, docs, ratio, instruction, stored_as=torch.float16)
    assert np.abs(served(ranked) - expected).max() <= 1e-4


def test_t5_architecture_serves_too(grpc_url, reranker_exports, tiny_t5_dir, repository):
    """T5 keeps its own conventions (plain prompt, decoder start token, </s> on passages); its reference is the
    exporter's, which follows the same official recipe on the T5 tokenizer and model. Its three models carry the
    stubs the last release exported (tests/legacy.py): this is the shim's test too."""
    export = reranker_exports[TINY_T5]
    for model_dir in export.model_dirs:
        assert "from nestrank.serving.models." in (repository / model_dir.name / "1" / "model.py").read_text()
    model, _ = load_checkpoint(tiny_t5_dir)
    expected = reference_scores(model, load_tokenizer(tiny_t5_dir), export.config, QUERY, DOCS, (4,))[4][0]
    with RerankClient(grpc_url, TINY_T5) as c:
        ranked = c.rerank(QUERY, DOCS)
    assert np.abs(served(ranked) - expected).max() <= 1e-3  # float32 reference; passage states held in float16


def cache_counters(server, model=KALM, prefix="nestrank_passage_cache_") -> dict[str, float]:
    """The model's passage counters, summed over its instances."""
    url = f"http://{server.config.host}:{server.config.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    counters: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix) and f'model="{model}"' in line:
            name, value = line.rsplit(" ", 1)
            key = name.split("{")[0].removeprefix(prefix)
            counters[key] = counters.get(key, 0.0) + float(value)
    return counters


STORE = "nestrank_passage_store_"


def test_a_second_rerank_over_the_same_documents_encodes_nothing(client, server):
    """The second rerank reads each passage from the rerank model's first level or from the store, and encodes none
    (no store miss)."""
    docs = [f"cache probe {i}: " + d for i, d in enumerate(DOCS[:6])]
    before, before_store = cache_counters(server), cache_counters(server, prefix=STORE)
    client.rerank(QUERY, docs)
    middle, middle_store = cache_counters(server), cache_counters(server, prefix=STORE)
    client.rerank("a different query", docs)
    after, after_store = cache_counters(server), cache_counters(server, prefix=STORE)
    assert middle_store["misses"] - before_store["misses"] == len(docs)
    assert after_store["misses"] == middle_store["misses"]
    assert (after["hits"] - middle["hits"]) + (after_store["hits"] - middle_store["hits"]) == len(docs)
    assert after["bytes"] > before["bytes"] and after["entries"] >= len(docs)


def test_warm_then_rerank_by_passage_id(client, server):
    docs = [f"warm probe {i}: " + d for i, d in enumerate(DOCS[:5])]
    ids = client.warm(docs)
    misses = cache_counters(server, prefix=STORE)["misses"]
    by_id = client.rerank(QUERY, passages=ids)
    by_text = client.rerank(QUERY, docs)
    assert cache_counters(server, prefix=STORE)["misses"] == misses  # nothing encoded again
    assert [r.index for r in by_id] == [r.index for r in by_text]
    assert [r.passage_id for r in by_id] == [ids[r.index] for r in by_id]


def test_coarser_ratio_from_cached_states_equals_the_official_scores(client, official_kalm):
    docs = [f"repool probe {i}: " + d for i, d in enumerate(DOCS[:6])]
    client.warm(docs, compression_ratio=4)
    ranked = client.rerank(QUERY, docs, compression_ratio=8)  # served from the ratio-4 states, re-pooled
    assert np.abs(served(ranked) - official_kalm.scores(QUERY, docs, 8, stored_as=torch.float16)).max() <= 1e-4


def test_client_held_states_round_trip_through_npz(client, tmp_path, official_kalm):
    docs = [f"npz probe {i}: " + d for i, d in enumerate(DOCS)]
    states = client.encode_passages(docs, compression_ratio=4, progress=False)
    assert len(states) == len(docs) and states.states.dtype == np.float16
    path = tmp_path / "passages.npz"
    states.save(path)
    loaded = PassageStates.load(path)
    assert loaded.fingerprint == client.info().passage_fingerprint
    ranked = client.rerank(QUERY, passages=loaded, compression_ratio=8)
    assert np.abs(served(ranked) - official_kalm.scores(QUERY, docs, 8, stored_as=torch.float16)).max() <= 1e-4
    # the same states as the documents path holds at the same ratio: the same scores
    same_ratio = served(client.rerank(QUERY, passages=loaded))
    np.testing.assert_allclose(same_ratio, served(client.rerank(QUERY, docs, compression_ratio=4)), atol=1e-6)


def test_large_candidate_lists_are_split_and_merged(grpc_url, client):
    docs = realistic_texts(23, seed=9)
    whole = client.rerank(QUERY, docs, top_n=5, return_documents=True)
    with RerankClient(grpc_url, KALM) as small:
        info = client.info()  # as if the server took 4 candidates at a time:
        small._client._info = dataclasses.replace(info, config=dataclasses.replace(info.config, max_candidates=4))
        split = small.rerank(QUERY, docs, top_n=5, return_documents=True)
    assert [(r.index, r.document) for r in split] == [(r.index, r.document) for r in whole]
    np.testing.assert_allclose([r.score for r in split], [r.score for r in whole], atol=1e-6)
    assert all(r.document == docs[r.index] for r in whole)


def test_async_client(grpc_url, client):
    async def run():
        async with AsyncRerankClient(grpc_url, KALM) as c:
            return await c.rerank(QUERY, DOCS, top_n=3)

    ranked = asyncio.run(run())
    assert [r.index for r in ranked] == [r.index for r in client.rerank(QUERY, DOCS, top_n=3)]


def test_cli_rerank(grpc_url, capsys):
    assert cli.rerank_main(["--query", QUERY, "ok", "open the file", "--url", grpc_url, "--model", KALM]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["index"] for r in rows) == [0, 1]
    assert {r["document"] for r in rows} == {"ok", "open the file"}


def test_client_side_validation_matches(client):
    with pytest.raises(ValidationError, match="compression_ratio: 3 was not exported"):
        client.rerank(QUERY, DOCS, compression_ratio=3)
    with pytest.raises(ValidationError, match="exactly one of documents= or passages="):
        client.rerank(QUERY)


def test_a_reranker_exported_before_the_ragged_layout_is_refused_at_load_saying_to_re_export(
    repository, reranker_exports, tmp_path
):
    """The tiny T5 reranker as the last release configured it (padded passage states, no passage_layout): the
    launcher refuses to serve it before tritonserver starts, naming the model, why and what to do."""
    import shutil

    from nestrank.serving.launcher.server import ServerConfig, ServerStartError, TritonServer
    from tests.legacy import as_configured_by_the_last_release

    export = reranker_exports[TINY_T5]
    for model_dir in export.model_dirs:
        suffix = model_dir.name.removeprefix(TINY_T5)
        kind = {"": "rerank", "_encode": "rerank_encode", "_score": "rerank_score"}[suffix]
        target = tmp_path / "repo" / model_dir.name
        shutil.copytree(repository / model_dir.name, target)
        as_configured_by_the_last_release(target, target.name, kind, export.config.hidden_size)
    with pytest.raises(ServerStartError) as refused:
        TritonServer(ServerConfig.on_free_ports(tmp_path / "repo", startup_timeout_s=120)).start()
    message = str(refused.value)
    assert f"{TINY_T5}: no passage_layout: this reranker was exported by a nestrank from before the one" in message
    assert "re-export it: `nestrank export reranker" in message
