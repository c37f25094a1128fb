"""`nestrank bench gpu` off the GPU: its timing in rounds, its config checks, and the RESULTS sections rendered from
the reports the H200 run saved (what `--render` rewrites)."""

import json
from pathlib import Path

import pytest

from nestrank.bench.gpu import GpuBenchConfig, results_markdown, round_robin

REPORTS = Path(__file__).resolve().parents[3] / "bench" / "reports"


def test_rounds_time_every_system_once_per_round_in_a_rotated_order():
    order = []
    passes = {name: (lambda name=name: order.append(name) or name) for name in "abc"}
    seconds, outputs = round_robin(passes, repeats=3, label="test")
    assert order == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then three rotated rounds
    assert set(seconds) == set("abc") and all(s >= 0 for s in seconds.values()) and outputs == dict(zip("abc", "abc"))


def test_the_config_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="part"):
        GpuBenchConfig(part="train")
    with pytest.raises(ValueError, match="repeats"):
        GpuBenchConfig(repeats=0)


@pytest.mark.parametrize("part", ["embed", "rerank"])
def test_the_saved_h200_reports_render_their_sections(part):
    report = json.loads((REPORTS / f"gpu-{part}-h200.json").read_text())
    markdown = results_markdown(report)
    assert "NVIDIA H200" in markdown and f"nestrank bench gpu --part {part}" in markdown
    rows = report["rows"] if part == "embed" else report["paths"]
    assert markdown.count("\n| ") - 1 >= len(rows)  # a table row per measured row, after the header
