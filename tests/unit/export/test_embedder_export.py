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


def test_parse_layers():
    from nestrank.export.embedder import parse_layers

    assert parse_layers(None, 6) == () and parse_layers("", 6) == ()
    assert parse_layers("2,3,4", 6) == (2, 3, 4, 6)  # the full depth is always served
    assert parse_layers("all", 6) == (1, 2, 3, 4, 5, 6)
    with pytest.raises(ValueError, match=r"--layers \[7\] outside 1..6"):
        parse_layers("3,7", 6)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_layers("three", 6)


def test_a_ladder_on_a_family_it_cannot_cut_is_refused(tiny_decoder_dir, tmp_path):
    with pytest.raises(ValueError, match="depth ladders are exported for bert"):
        export_embedder(tiny_decoder_dir, "tiny", tmp_path / "repo", layers="1", log=lambda _: None)
    assert not (tmp_path / "repo" / "tiny").exists()


@pytest.mark.slow
def test_minilm_ladder_exports_segments_gated_at_every_depth(minilm_dir, tmp_path):
    from nestrank.export.embedder import embed_at
    from nestrank.protocol.embedding import parse_options
    from nestrank.texts import realistic_texts

    lines = []
    result = export_embedder(minilm_dir, "ladder", tmp_path / "repo", layers="3", log=lines.append)
    assert [r.layers for r in result.parities] == [3, None] and all(r.passed() for r in result.parities)
    assert any("parity fp32 at depth 3: min cosine" in line for line in lines)
    assert result.config.layers == (3, 6) and result.config.num_layers == 6 and result.config.fused
    assert result.fusions["Attention"] == 6 and result.fusions["SkipLayerNormalization"] == 12
    version = result.model_dir / "1"
    assert sorted(p.name for p in version.glob("*.onnx")) == ["layers_3.onnx", "layers_6.onnx"]
    with np.load(version / "calibration.npz") as ranges:
        assert {"384", "384@3", "32", "32@3"} <= set(ranges.files)
    embedder = Embedder.load(version, result.config)
    assert [(s.depth, s.first, s.last) for s in embedder.segments] == [(3, True, False), (6, False, True)]
    # Mixed depths in one execution: each text leaves the chain at its own depth, as if it ran alone.
    texts = realistic_texts(24, seed=5)
    jobs = [embedder.pre(texts[i::3], parse_options({"layers": k}, result.config)) for i, k in enumerate((3, 6, 3))]
    embedder.core(jobs)
    for i, (job, k) in enumerate(zip(jobs, (3, None, 3))):
        np.testing.assert_allclose(job.result, embed_at(embedder, texts[i::3], k), atol=2e-6)
    assert np.sum(jobs[0].result * embed_at(embedder, texts[0::3], None), axis=1).max() < 0.999  # depth matters
