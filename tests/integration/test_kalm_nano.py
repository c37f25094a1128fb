"""The KaLM-Reranker-V1-Nano shape (640 wide, vocabulary 262,144, its heads, windows and rope), stored in bfloat16
with a Gemma-like tokenizer that prepends <bos>, and never seen by the other tests: found by its model id in a
Hugging Face cache laid out on disk (offline), exported with the CLI, served by a real tritonserver, and scored
like the official code at ratios 1, 4 and 32, a query past 512 tokens included.

6 + 6 of its 18 + 18 layers: one whole cycle of five sliding-window layers and a global one, every layer type the
full depth repeats, at a third of the export time (the full depth is what `nestrank bench fbnl`, `store` and
`gpu` export)."""

from __future__ import annotations

import numpy as np
import pytest

from nestrank.clients.rerank import RerankClient
from nestrank.export.cli import main as export_main
from nestrank.export.tiny_checkpoints import kalm_shaped_reranker
from nestrank.serving.launcher.server import ServerConfig, TritonServer
from nestrank.texts import realistic_texts
from tests.official_kalm import OfficialKaLM

pytestmark = pytest.mark.slow

MODEL_ID = "KaLM-Embedding/KaLM-Reranker-V1-Nano"
NAME = "kalm-nano"
RATIOS = (1, 4, 32)
LAYERS = 6
DOCS = ["ok", "open the file and read each line", realistic_texts(1, seed=31)[0],
        "an image ends here <end_of_image> and the text goes on", " ".join(realistic_texts(60, seed=32))[:3000],
        " ".join(realistic_texts(120, seed=33))]  # fmt: skip


def hub_cache(tmp_path, checkpoint):
    """`checkpoint` laid out as huggingface_hub stores a download of MODEL_ID."""
    repo = tmp_path / "hub" / ("models--" + MODEL_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / ("c" * 40)
    snapshot.parent.mkdir(parents=True)
    checkpoint.rename(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    return tmp_path / "hub", snapshot


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nano")
    cache, snapshot = hub_cache(tmp, kalm_shaped_reranker(tmp / "ckpt", "nano", layers=LAYERS, seed=2024))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("HF_HUB_CACHE", str(cache))
        ratios = ",".join(map(str, RATIOS))
        assert export_main(["reranker", "--checkpoint", MODEL_ID, "--name", NAME, "--repository",
                            str(tmp / "repo"), "--ratios", ratios]) == 0  # fmt: skip
    config = ServerConfig.on_free_ports(tmp / "repo")
    with TritonServer(config), RerankClient(config.grpc_url, NAME) as client:
        yield client, OfficialKaLM(snapshot)


def served(ranked) -> np.ndarray:
    return np.array([r.score for r in sorted(ranked, key=lambda r: r.index)])


@pytest.mark.parametrize("ratio", RATIOS)
def test_the_nano_shape_scores_like_the_official_code(nano, ratio):
    client, official = nano
    assert client.info().hidden_size == 640
    lengths = [len(official.passage_ids(d)) for d in DOCS]
    assert min(lengths) < max(RATIOS)  # shorter than the coarsest ratio
    assert any(512 < n < 1024 for n in lengths) and max(lengths) == 1024  # past the window; cut at the limit
    query = "which documents explain how to read a file line by line"
    got = served(client.rerank(query, DOCS, compression_ratio=ratio))
    assert np.abs(got - official.scores(query, DOCS, ratio)).max() <= 1e-4
    long_query = " ".join(realistic_texts(40, seed=34))
    assert len(official.tokenizer(long_query, add_special_tokens=False)["input_ids"]) > 512
    docs = DOCS[:3]
    got = served(client.rerank(long_query, docs, compression_ratio=ratio))
    assert np.abs(got - official.scores(long_query, docs, ratio)).max() <= 1e-4
