"""The exporter's parity gate and outputs, on the tiny decoder embedder (fast) and the real MiniLM."""

import numpy as np
import pytest

from nestrank.export.embedder import ParityError, export_embedder
from nestrank.export.triton_config import read_config, string_parameters
from nestrank.protocol.embedding import EmbedderConfig
from nestrank.serving.pipeline.embedder import Embedder


def test_decoder_embedder_exports_with_parity(tiny_decoder_dir, tmp_path):
    result = export_embedder(tiny_decoder_dir, "tiny", tmp_path / "repo", log=lambda _: None)
    assert result.parity.min_cosine >= 0.99999
    model_dir = tmp_path / "repo" / "tiny"
    config = EmbedderConfig.from_parameters(string_parameters(read_config(model_dir)))
    assert config == result.config and config.pooling == "lasttoken"
    embedder = Embedder.load(model_dir / "1", config)
    # Semantic tensor names, dynamic batch and sequence axes.
    inputs = {i.name: i.shape for i in embedder.session.get_inputs()}
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert all(isinstance(d, str) for d in inputs["input_ids"])
    assert [o.name for o in embedder.session.get_outputs()] == ["embeddings", "pooled_embeddings"]
    with np.load(model_dir / "1" / "calibration.npz") as ranges:
        assert sorted(map(int, ranges.files)) == [32, 64]


def test_parity_gate_refuses_a_wrong_graph_and_writes_nothing(tiny_decoder_dir, tmp_path):
    # Mean pooling on a last-token model: the graph no longer matches the reference.
    with pytest.raises(ParityError, match="nothing written"):
        export_embedder(tiny_decoder_dir, "wrong", tmp_path / "repo", pooling="mean", log=lambda _: None)
    assert not (tmp_path / "repo" / "wrong").exists()
    assert not list(tmp_path.glob(".export-*"))


@pytest.mark.slow
def test_minilm_int8_parity_figures(minilm_dir, tmp_path):
    lines = []
    result = export_embedder(minilm_dir, "m8", tmp_path / "repo", precision="int8", log=lines.append)
    assert result.parity.passed() and result.parity.mean_cosine >= 0.98
    assert any("parity int8: min cosine" in line for line in lines)
    assert result.config.fused and result.fusions["Attention"] == 6  # the int8 graph is the fused one, quantized
