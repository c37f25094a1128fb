"""The front's TEI /info shows the served model's limits as Triton reports them (a local Triton-protocol server here,
serving an embedder whose config was set at serve time)."""

import dataclasses

import pytest
from fastapi.testclient import TestClient

from nestrank.api.app import create_app
from nestrank.api.settings import FrontSettings
from tests.unit.clients.local_triton import EMBEDDER, LocalTriton


@pytest.fixture
def triton():
    served = dataclasses.replace(EMBEDDER, max_batch_tokens=4096, max_queue_wait_s=5.0)  # as --limit would set them
    server = LocalTriton(models={"m": (served, 4)})
    yield server
    server.stop()


def test_tei_info_shows_the_limits_in_force(triton):
    with TestClient(create_app(FrontSettings(triton_urls=(triton.url,), models=("m",)))) as client:
        info = client.get("/info").json()
    assert info["max_batch_tokens"] == 4096 and info["max_client_batch_size"] == 2048
    assert info["limits"] == {"max_batch_tokens": 4096, "max_queue_wait_s": 5.0, "max_run_tokens": 8192,
                              "max_run_sequences": 64, "intra_op_threads": 0}  # fmt: skip
