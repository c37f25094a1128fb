"""Short load-test runs against the real server: structure and zero errors, never speed."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from nestrank.bench.load import LoadConfig, run
from tests.names import KALM, MINILM

pytestmark = pytest.mark.slow


def check(rows, code, expected_levels):
    assert code == 0
    assert len(rows) == expected_levels
    for row in rows:
        assert row["errors"] == {} and row["error_rate"] == 0
        assert row["items_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]


def test_embed_closed_and_open_loop(grpc_url, repository, tmp_path):
    common = dict(workload="embed", model=MINILM, urls=(grpc_url,), repository=repository, requests=6, warmup=1,
                  batch_size=4, out_dir=tmp_path, dimensions=128, precision="int8")  # fmt: skip
    rows, code = run(LoadConfig(concurrency=(1, 3), **common), log=lambda _: None)
    check(rows, code, 2)
    assert rows[0]["tokens_per_s"] > rows[0]["items_per_s"]  # counted with the model's own tokenizer
    rows, code = run(LoadConfig(rates=(4.0,), **common), log=lambda _: None)
    check(rows, code, 1)
    assert rows[0]["mode"] == "open" and rows[0]["rate"] == 4.0
    for suffix in ("json", "csv", "png"):
        assert (tmp_path / f"embed-{MINILM}.{suffix}").stat().st_size > 0


@pytest.mark.parametrize("passages", ["cached", "states", "fresh"])
def test_rerank_with_and_without_pre_encoded_passages(grpc_url, repository, tmp_path, passages):
    config = LoadConfig(workload="rerank", model=KALM, urls=(grpc_url,), repository=repository, requests=4,
                        warmup=1, batch_size=5, concurrency=(2,), passages=passages, out_dir=tmp_path)  # fmt: skip
    rows, code = run(config, log=lambda _: None)
    check(rows, code, 1)
    assert rows[0]["items_per_s"] > 0


def test_error_rate_over_the_limit_exits_non_zero(grpc_url, repository, tmp_path):
    common = dict(
        workload="embed",
        model=MINILM,
        urls=(grpc_url,),
        repository=repository,
        requests=3,
        warmup=0,
        batch_size=2,
        concurrency=(1,),
        dimensions=100,
        out_dir=tmp_path,
    )  # 100 is not a served dimension
    rows, code = run(LoadConfig(**common), log=lambda _: None)
    assert code == 1
    assert rows[0]["errors"] == {"INVALID_ARGUMENT": 3} and rows[0]["error_rate"] == 1.0
    assert run(LoadConfig(max_error_rate=1.0, **common), log=lambda _: None)[1] == 0


def test_locust_user_drives_the_server(grpc_url, tmp_path):
    locustfile = Path(__file__).resolve().parents[2] / "bench" / "locustfile.py"
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "EmbedUser", "--headless", "-u", "2", "-r", "2",
           "-t", "6s", "--host", grpc_url, "--csv", str(tmp_path / "locust"), "--only-summary"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={"NESTRANK_MODEL": MINILM, "NESTRANK_BATCH_SIZE": "4", "PATH": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "locust_stats.csv") as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(stats[f"embed {MINILM}"]["Request Count"]) > 0
    assert int(stats[f"embed {MINILM}"]["Failure Count"]) == 0
