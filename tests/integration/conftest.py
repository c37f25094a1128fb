"""One real tritonserver per session on free loopback ports, serving models exported on the fly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nestrank.export.embedder import export_embedder
from nestrank.serving.launcher.server import ServerConfig, TritonServer
from tests.legacy import as_exported_by_the_last_release
from tests.names import MINILM, MINILM_INT8, MINILM_LADDER, MINILM_LAYERS, TINY_DECODER, TINY_T5


@pytest.fixture(scope="session")
def repository(tmp_path_factory, minilm_dir, tiny_decoder_dir, reranker_exports) -> Path:
    repo = tmp_path_factory.mktemp("model_repository")
    for export in reranker_exports.values():
        for model_dir in export.model_dirs:
            shutil.copytree(model_dir, repo / model_dir.name)
    quiet = lambda _: None  # noqa: E731
    export_embedder(minilm_dir, MINILM, repo, log=quiet)
    export_embedder(minilm_dir, MINILM_INT8, repo, precision="int8", log=quiet)
    export_embedder(minilm_dir, MINILM_LAYERS, repo, layers=MINILM_LADDER, log=quiet)
    export_embedder(tiny_decoder_dir, TINY_DECODER, repo, max_batch_size=16, log=quiet)
    # The tiny T5 reranker and the tiny decoder serve with the stubs the last release exported: every test through
    # them also proves that an upgrade keeps serving a repository exported before the layout by concern.
    for model_dir in [*reranker_exports[TINY_T5].model_dirs, repo / TINY_DECODER]:
        as_exported_by_the_last_release(repo / model_dir.name)
    return repo


@pytest.fixture(scope="session")
def passage_store(tmp_path_factory) -> str:
    """The session server's passage store: LMDB, as `nestrank serve` has by default."""
    return f"lmdb://{tmp_path_factory.mktemp('passages')}"


@pytest.fixture(scope="session")
def small_repository(tmp_path_factory, tiny_decoder_dir) -> Path:
    """One tiny embedder, exported in seconds: for tests of the launcher itself (each starts its own servers)."""
    repo = tmp_path_factory.mktemp("small_repository")
    export_embedder(tiny_decoder_dir, TINY_DECODER, repo, max_batch_size=16, log=lambda _: None)
    return repo


@pytest.fixture(scope="session")
def server(repository, passage_store):
    config = ServerConfig.on_free_ports(repository, passage_store=passage_store)
    with TritonServer(config) as running:
        yield running


@pytest.fixture(scope="session")
def grpc_url(server) -> str:
    return server.config.grpc_url
