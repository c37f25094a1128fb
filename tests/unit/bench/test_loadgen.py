import asyncio
import csv
import json

import numpy as np
import pytest

from nestrank.bench.load import LoadConfig, load_texts
from nestrank.bench.loadgen import RunResult, arrival_offsets, closed_loop, open_loop, write_reports
from nestrank.protocol.errors import OverloadedError, ValidationError


def test_summary_percentiles_and_rates():
    result = RunResult(latencies_s=[i / 1000 for i in range(1, 101)], items=400, tokens=8000, wall_s=2.0)
    result.errors.update({"INVALID_ARGUMENT": 3, "UNAVAILABLE": 1})
    row = result.summary()
    assert row["requests"] == 104 and row["errors"] == {"INVALID_ARGUMENT": 3, "UNAVAILABLE": 1}
    assert row["error_rate"] == pytest.approx(4 / 104)
    assert row["p50_ms"] == pytest.approx(50.5) and row["max_ms"] == pytest.approx(100)
    assert row["p99.9_ms"] == pytest.approx(99.901, abs=1e-3)
    assert (row["requests_per_s"], row["items_per_s"], row["tokens_per_s"]) == (50, 200, 4000)


def test_closed_loop_keeps_concurrency_and_counts_errors_by_code_and_overload_apart():
    in_flight, peak = 0, 0

    async def send(i):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002)
        in_flight -= 1
        if i % 10 == 0:
            raise ValidationError("dimensions", "bad")
        if i % 10 == 1:
            raise OverloadedError("queue full")
        return 2, 10

    result = asyncio.run(closed_loop(send, 50, concurrency=4))
    assert peak == 4
    assert result.errors == {"INVALID_ARGUMENT": 5} and result.overloaded == 5
    assert len(result.latencies_s) == 40 and result.items == 80 and result.tokens == 400
    row = result.summary()
    assert row["error_rate"] == pytest.approx(5 / 50) and row["overload_rate"] == pytest.approx(5 / 50)
    assert len(result.shed_latencies_s) == 5 and 2 <= row["shed_p50_ms"] <= row["shed_max_ms"]  # refusals timed too


def test_closed_loop_stops_at_its_duration():
    async def send(i):
        await asyncio.sleep(0.01)
        return 1, 0

    result = asyncio.run(closed_loop(send, 1 << 40, concurrency=2, duration_s=0.2))
    assert 10 <= len(result.latencies_s) <= 50
    assert result.wall_s >= 0.2  # it ran its duration; the request count above shows it stopped there


def test_arrivals_follow_the_rate():
    offsets = arrival_offsets(4000, rate=50.0, seed=1)
    assert offsets[0] == 0 and np.all(np.diff(offsets) >= 0)
    assert 4000 / offsets[-1] == pytest.approx(50.0, rel=0.05)
    np.testing.assert_array_equal(offsets, arrival_offsets(4000, rate=50.0, seed=1))  # seeded
    np.testing.assert_allclose(arrival_offsets(5, rate=10, seed=0, poisson=False), [0, 0.1, 0.2, 0.3, 0.4])


def test_open_loop_latency_includes_queueing_behind_a_slow_server():
    """A server that handles one request at a time, slower than the arrival rate: the queue grows, and
    latency measured from the schedule shows it (a closed loop would report the service time only)."""
    lock = asyncio.Lock()

    async def run():
        async def send(i):
            async with lock:
                await asyncio.sleep(0.02)  # 50/s capacity
            return 1, 0

        return await open_loop(send, 20, rate=200.0, seed=0)

    result = asyncio.run(run())
    assert len(result.latencies_s) == 20
    assert max(result.latencies_s) > 0.2  # queueing: over 10x the 20 ms service time
    assert result.wall_s >= 0.4


def test_reports_json_csv_png(tmp_path):
    def row(c):
        summary = RunResult(latencies_s=[0.01 * c, 0.02 * c], items=10, wall_s=1.0).summary()
        return {"series": "s", "mode": "closed", "concurrency": c, "rate": None, **summary}

    rows = [row(1), row(4)]
    json_path, csv_path, png_path = write_reports(rows, tmp_path, "embed-m", "title")
    assert json.loads(json_path.read_text())[1]["concurrency"] == 4
    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert table[0]["p99_ms"] and json.loads(table[0]["errors"]) == {}
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_config_is_validated():
    with pytest.raises(ValueError, match="workload"):
        LoadConfig(workload="classify", model="m")
    with pytest.raises(ValueError, match="rate"):
        LoadConfig(workload="embed", model="m", rates=(0,))
    with pytest.raises(ValueError, match="max_error_rate"):
        LoadConfig(workload="embed", model="m", max_error_rate=2)


def test_texts_from_a_file_or_jsonl(tmp_path):
    (tmp_path / "t.txt").write_text("one\n\ntwo\n")
    (tmp_path / "t.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert load_texts(LoadConfig("embed", "m", input=tmp_path / "t.txt"), 5) == ["one", "two", "one", "two", "one"]
    assert load_texts(LoadConfig("embed", "m", input=tmp_path / "t.jsonl"), 2) == ["a", "b"]
    assert len(load_texts(LoadConfig("embed", "m"), 7)) == 7
