"""Index once, rerank by id from any replica, across restarts: `nestrank serve` replicas sharing a real redis-server,
`nestrank serve` on a real LMDB (restarted, two model instances; int8 states), `nestrank index` killed and rerun,
corrupt values, a store outage, and states of one model refused by another."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from nestrank.bench.redis_process import RedisServer
from nestrank.clients.indexing import main as index_main
from nestrank.clients.rerank import RerankClient
from nestrank.clients.tensors import array_input, requested, text_input
from nestrank.clients.transport import NO_RETRIES
from nestrank.export.reference import reference_scores
from nestrank.export.reranker import INT8_STATES_MAX_SCORE_DIFF, export_reranker, load_checkpoint, load_tokenizer
from nestrank.export.tiny_checkpoints import tiny_t5_reranker
from nestrank.export.triton_config import read_config, write_config
from nestrank.protocol.errors import NotFoundError, UnavailableError, ValidationError
from nestrank.protocol.reranking import (
    PASSAGE_COUNTS,
    PASSAGE_GROUPS,
    PASSAGE_STATES,
    QUERY,
    SCORES,
    passage_id,
    wire_tensors,
)
from nestrank.serving.pipeline.passage_store import open_store
from nestrank.texts import realistic_texts
from tests.names import T5_MAX_PASSAGE_TOKENS, TINY_T5
from tests.serve_process import ServeProcess, metric_values

pytestmark = pytest.mark.slow

OTHER = "tiny-t5-other-weights"  # the same architecture and width, other weights
QUERY_TEXT = "how do I read a file"
TEXTS = realistic_texts(40, seed=41)
IDS = [f"doc-{i}" for i in range(len(TEXTS))]


def served(ranked) -> np.ndarray:
    return np.array([r.score for r in sorted(ranked, key=lambda r: r.index)])


@pytest.fixture(scope="module")
def repository(tmp_path_factory, reranker_exports):
    """The tiny T5 reranker, its rerank model given two instances, and a second export with other weights."""
    import shutil

    repo = tmp_path_factory.mktemp("store_repository")
    for model_dir in reranker_exports[TINY_T5].model_dirs:
        shutil.copytree(model_dir, repo / model_dir.name)
    config = read_config(repo / TINY_T5)
    config.instance_group[0].count = 2
    write_config(config, repo / TINY_T5)
    other = tiny_t5_reranker(tmp_path_factory.mktemp("other-t5"), seed=1)
    export_reranker(other, OTHER, repo, max_passage_tokens=T5_MAX_PASSAGE_TOKENS, log=lambda _: None)
    return repo


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 good rows, and bad ones between them (their line numbers → what the rejects file must say)."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    lines = [json.dumps({"id": i, "text": t}) for i, t in zip(IDS, TEXTS)]
    bad = {
        '{"id": "no-text"}': "missing text",
        '{"text": "a text without an id"}': "missing id",
        '{"id": 17, "text": "a numeric id"}': "id: must be a string, got int",
        '{"id": "empty", "text": "  "}': "text: empty",
        "this is not json": "not a JSON object",
        '["a", "list"]': "not a JSON object (a list)",
        json.dumps({"id": "doc-3", "text": "other text for an id seen before"}): "'doc-3' appeared at line 4",
    }
    expected = {}
    for offset, (line, reason) in enumerate(bad.items()):
        lines.insert(10 + 4 * offset, line)
    lines.append(json.dumps({"id": "doc-5", "text": TEXTS[5]}))  # the same row twice: not a reject
    for number, line in enumerate(lines, 1):
        if line in bad:
            expected[number] = bad[line]
    path.write_text("\n".join(lines) + "\n")
    return path, expected


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-data")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(repository, redis):
    """Two `nestrank serve` replicas sharing one redis-server."""
    a = ServeProcess(repository, "--passage-store", redis.url + "?timeout_s=0.5").start()
    try:
        b = ServeProcess(repository, "--passage-store", redis.url + "?timeout_s=0.5").start()
    except Exception:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def reference(tiny_t5_dir, reranker_exports):
    model, _ = load_checkpoint(tiny_t5_dir)
    tokenizer, config = load_tokenizer(tiny_t5_dir), reranker_exports[TINY_T5].config
    return lambda docs: reference_scores(model, tokenizer, config, QUERY_TEXT, docs, (4,))[4][0]


def test_index_through_one_replica_and_rerank_by_id_through_the_other(replicas, corpus, reference, tmp_path):
    a, b = replicas
    path, bad_lines = corpus
    rejects = tmp_path / "rejects.jsonl"
    code = index_main([str(path), "--url", a.grpc_url, "--model", TINY_T5, "--rejects", str(rejects), "--quiet"])
    assert code == 1  # done, and it says rows were rejected
    refused = {row["line"]: row["reason"] for row in map(json.loads, rejects.read_text().splitlines())}
    assert set(refused) == set(bad_lines)
    assert all(bad_lines[line] in reason for line, reason in refused.items()), refused
    with RerankClient(a.grpc_url, TINY_T5) as on_a, RerankClient(b.grpc_url, TINY_T5) as on_b:
        by_id = served(on_b.rerank(QUERY_TEXT, passages=IDS))
        by_text = served(on_a.rerank(QUERY_TEXT, TEXTS))
        np.testing.assert_allclose(by_id, by_text, atol=1e-6)
        assert np.abs(by_text - reference(TEXTS)).max() <= 1e-3  # float32 reference, float16 passage states
        content_ids = [passage_id(t) for t in TEXTS[:3]]  # content ids keep working
        np.testing.assert_allclose(served(on_b.rerank(QUERY_TEXT, passages=content_ids)), by_text[:3], atol=1e-6)
        on_b.index(["a new text for doc-0"], ["doc-0"])  # an id indexed again points at its new text
        moved = served(on_a.rerank(QUERY_TEXT, passages=["doc-0"]))
        np.testing.assert_allclose(moved, served(on_a.rerank(QUERY_TEXT, ["a new text for doc-0"])), atol=1e-6)
        on_b.index([TEXTS[0]], ["doc-0"])
        with pytest.raises(NotFoundError, match=r"passage_ids: 2 of 3 ids are not stored .*'nope-1', 'nope-2'"):
            on_b.rerank(QUERY_TEXT, passages=["doc-1", "nope-1", "nope-2"])


def test_a_store_outage_fails_ids_only_and_a_restarted_store_serves_them_again(replicas, redis):
    a, _ = replicas
    with RerankClient(a.grpc_url, TINY_T5, retry=NO_RETRIES) as client:
        expected = served(client.rerank(QUERY_TEXT, passages=IDS))
        outcomes, stop = [], threading.Event()

        def traffic():
            while not stop.is_set():
                for kind, call in (("ids", lambda: client.rerank(QUERY_TEXT, passages=IDS)),
                                   ("documents", lambda: client.rerank(QUERY_TEXT, TEXTS))):  # fmt: skip
                    try:
                        outcomes.append((kind, time.monotonic(), served(call())))
                    except (UnavailableError, NotFoundError) as err:
                        outcomes.append((kind, time.monotonic(), err))

        thread = threading.Thread(target=traffic)
        thread.start()
        time.sleep(1.0)
        killed = time.monotonic()
        redis.kill()
        time.sleep(3.0)
        stop.set()
        thread.join(60)
        errors_before_restart = sum(metric_values(a.metrics_url, "nestrank_passage_store_errors", TINY_T5).values())
        redis.start()  # the same port and append-only file
        again = served(client.rerank(QUERY_TEXT, passages=IDS))
    after = [(kind, result) for kind, at, result in outcomes if at > killed + 0.5]
    assert any(kind == "documents" for kind, _ in after) and any(kind == "ids" for kind, _ in after)
    for kind, _, result in outcomes:  # never a wrong or partial answer
        if isinstance(result, Exception):
            assert kind == "ids" and isinstance(result, UnavailableError) and redis.url in str(result)
        else:
            np.testing.assert_allclose(result, expected, atol=1e-5)
    assert all(isinstance(r, UnavailableError) for kind, r in after if kind == "ids")
    assert all(not isinstance(r, Exception) for kind, r in after if kind == "documents")
    assert errors_before_restart > 0  # the documents path counted the failures it served through
    np.testing.assert_allclose(again, expected, atol=1e-6)


def test_a_corrupt_value_is_a_miss_never_a_wrong_score(replicas, redis):
    import redis as redis_py

    a, b = replicas
    text = "a corrupt probe: open the file and read each line"
    with RerankClient(a.grpc_url, TINY_T5) as on_a, RerankClient(b.grpc_url, TINY_T5) as on_b:
        on_a.index([text], ["probe"])
        expected = served(on_a.rerank(QUERY_TEXT, passages=["probe"]))
        key = f"nrps:{on_a.info().passage_fingerprint}:4:{passage_id(text)}"
        raw = redis_py.Redis.from_url(redis.url)
        value = bytearray(raw.get(key))
        value[-3] ^= 0x20  # one bit of the stored states
        raw.set(key, bytes(value))
        # B never read this passage: its instances ask the store, find the value corrupt, and miss
        with pytest.raises(NotFoundError, match="1 of 1 ids"):
            on_b.rerank(QUERY_TEXT, passages=["probe"])
        assert sum(metric_values(b.metrics_url, "nestrank_passage_store_corrupt", TINY_T5).values()) >= 1
        assert raw.get(key) is None  # removed, so that the next write replaces it
        np.testing.assert_allclose(served(on_b.rerank(QUERY_TEXT, [text])), expected, atol=1e-5)  # encoded anew
        np.testing.assert_allclose(served(on_b.rerank(QUERY_TEXT, passages=["probe"])), expected, atol=1e-5)


def test_an_index_run_killed_halfway_finishes_on_a_rerun_writing_each_row_once(replicas, redis, tmp_path, capsys):
    import redis as redis_py

    a, _ = replicas
    texts = realistic_texts(120, seed=43)
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"id": f"big-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    args = [str(path), "--url", a.grpc_url, "--model", TINY_T5, "--batch-size", "4", "--concurrency", "1", "--quiet"]
    with RerankClient(a.grpc_url, TINY_T5) as client:
        fingerprint = client.info().passage_fingerprint
    raw = redis_py.Redis.from_url(redis.url)

    def stored_aliases() -> int:
        return sum(1 for _ in raw.scan_iter(match=f"nrpa:{fingerprint}:*".encode(), count=1000))

    before = stored_aliases()
    process = subprocess.Popen([sys.executable, "-m", "nestrank", "index", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while stored_aliases() - before < 40 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before_kill = stored_aliases() - before
    assert 0 < done_before_kill < len(texts)
    capsys.readouterr()
    code = index_main(args)
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 0 and summary["rows"] == len(texts)
    assert summary["skipped"] >= done_before_kill and summary["indexed"] + summary["skipped"] == len(texts)
    assert stored_aliases() - before == len(texts)
    states = {f"nrps:{fingerprint}:4:{passage_id(t)}".encode() for t in texts}
    assert sum(1 for key in raw.scan_iter(match=f"nrps:{fingerprint}:4:*".encode(), count=1000)
               if key in states) == len(states)  # fmt: skip


def test_an_index_rerun_reports_what_it_skipped(replicas, corpus, capsys, tmp_path):
    a, _ = replicas
    path, _ = corpus
    code = index_main([str(path), "--url", a.grpc_url, "--model", TINY_T5, "--quiet",
                       "--rejects", str(tmp_path / "r.jsonl")])  # fmt: skip
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 1 and summary["indexed"] == 0 and summary["skipped"] == len(TEXTS) and summary["tokens"] == 0


def test_states_of_one_model_are_refused_by_another(replicas):
    a, _ = replicas
    with RerankClient(a.grpc_url, TINY_T5) as mine, RerankClient(a.grpc_url, OTHER) as other:
        states = mine.encode_passages(TEXTS[:4])
        assert states.fingerprint == mine.info().passage_fingerprint != other.info().passage_fingerprint
        with pytest.raises(ValidationError, match="passage_fingerprint: the states were made by the model"):
            other.rerank(QUERY_TEXT, passages=states)  # refused before sending
        other_fingerprint = other.info().passage_fingerprint
    # and by the server itself, whatever a client does
    raw = grpcclient.InferenceServerClient(a.grpc_url)
    wire = wire_tensors(states)
    inputs = [text_input(QUERY, [QUERY_TEXT], [1, 1]), array_input(PASSAGE_STATES, wire[PASSAGE_STATES][None], "FP16"),
              array_input(PASSAGE_COUNTS, wire[PASSAGE_COUNTS][None], "INT32"),
              array_input(PASSAGE_GROUPS, wire[PASSAGE_GROUPS][None], "INT32")]  # fmt: skip
    for fingerprint, words in ((states.fingerprint, f"{states.fingerprint[:20]}"), (None, "carry no passage")):
        parameters = {"passage_fingerprint": fingerprint} if fingerprint else {}
        with pytest.raises(Exception) as caught:
            raw.infer(OTHER, inputs, outputs=requested(SCORES), parameters=parameters)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and words in caught.value.message()
        if fingerprint:
            assert other_fingerprint in caught.value.message()
    raw.close()


def test_lmdb_serves_ids_across_restarts_from_either_instance(repository, tmp_path):
    store = f"lmdb://{tmp_path / 'passages'}"
    with ServeProcess(repository, "--passage-store", store) as server:
        with RerankClient(server.grpc_url, TINY_T5, concurrency=8) as client:
            client.index(TEXTS, IDS)
            before = served(client.rerank(QUERY_TEXT, passages=IDS))
            import asyncio

            from nestrank.clients.rerank import AsyncRerankClient

            async def many():
                async with AsyncRerankClient(server.grpc_url, TINY_T5) as c:
                    return await asyncio.gather(*(c.rerank(QUERY_TEXT, passages=IDS[i:]) for i in range(16)))

            results = asyncio.run(many())
        for i, ranked in enumerate(results):
            np.testing.assert_allclose(served(ranked), before[i:], atol=1e-6)
        lookups = {}
        for name in ("nestrank_passage_cache_hits", "nestrank_passage_cache_misses"):
            for instance, value in metric_values(server.metrics_url, name, TINY_T5).items():
                lookups[instance] = lookups.get(instance, 0) + value
        assert len(lookups) == 2 and all(v > 0 for v in lookups.values()), lookups  # both instances answered
        store_hits = metric_values(server.metrics_url, "nestrank_passage_store_hits", TINY_T5)
        assert sum(store_hits.values()) > 0  # the instance that did not index read the store
    with ServeProcess(repository, "--passage-store", store) as restarted:
        with RerankClient(restarted.grpc_url, TINY_T5) as client:
            np.testing.assert_allclose(served(client.rerank(QUERY_TEXT, passages=IDS)), before, atol=1e-6)


def test_int8_states_through_nestrank_serve(repository, tmp_path):
    """`nestrank serve --passage-states int8` on a real LMDB: indexed ids rerank as their texts do, within the
    export's int8 gate of a float16 server's scores, from int8 values under their own keys at about half the bytes."""
    texts, ids = TEXTS[:8], IDS[:8]
    scores, value_bytes = {}, {}
    for states in ("float16", "int8"):
        path = tmp_path / states
        with ServeProcess(repository, "--passage-store", f"lmdb://{path}", "--passage-states", states, "--no-api") as s:
            with RerankClient(s.grpc_url, TINY_T5) as client:
                written = int(client.index(texts, ids).stored_bytes.sum())
                scores[states] = served(client.rerank(QUERY_TEXT, passages=ids))
                np.testing.assert_allclose(served(client.rerank(QUERY_TEXT, texts)), scores[states], atol=1e-6)
        store = open_store(f"lmdb://{path}")
        with store.env.begin() as txn:
            values = {k: v for k, v in txn.cursor(db=store.pinned) if k.startswith(b"nrps:")}
        assert len(values) == len(texts) and all((b":i8:" in k) == (states == "int8") for k in values)
        assert {v[5] for v in values.values()} == {1 if states == "float16" else 2}  # the header's dtype code
        value_bytes[states] = sum(len(v) for v in values.values())
        assert written > value_bytes[states]  # the values, and the aliases
    assert 0 < np.abs(scores["int8"] - scores["float16"]).max() <= INT8_STATES_MAX_SCORE_DIFF
    assert 0.5 < value_bytes["int8"] / value_bytes["float16"] < 0.6
