"""`nestrank bench embed --layers ... --compare-models ...`: every (model, depth) in one run, and the ratios."""

import pytest

from nestrank.bench import load
from nestrank.bench.load import LoadConfig, format_variants


def row(series: str, texts_per_s: float) -> dict:
    return {"series": series, "concurrency": 16, "rate": None, "items_per_s": texts_per_s}


def test_depth_and_model_ratios(monkeypatch):
    monkeypatch.setattr(load, "full_depth", lambda config, model: 6)
    config = LoadConfig(workload="embed", model="fused", models=("plain",), layers=(3, 6), concurrency=(16,))
    rows = [row("embed fused layers=3", 200.0), row("embed fused layers=6", 100.0),
            row("embed plain layers=3", 120.0), row("embed plain layers=6", 60.0)]  # fmt: skip
    lines = format_variants(rows, config).splitlines()
    assert "c=16 fused depth 3 of 6: 200.0 texts/s, time 0.50x the full depth's (FLOP-bound 0.50x)" in lines
    assert "c=16 plain depth 6 of 6: 60.0 texts/s, time 1.00x the full depth's (FLOP-bound 1.00x)" in lines
    assert "c=16 fused: 100.0 texts/s, plain: 60.0 texts/s (1.67x)" in lines


def test_layers_and_models_are_embed_options():
    with pytest.raises(ValueError, match="embed options"):
        LoadConfig(workload="rerank", model="r", layers=(2,))
    with pytest.raises(ValueError, match=">= 1"):
        LoadConfig(workload="embed", model="m", layers=(0,))
