import json

import pytest

from nestrank.export.checkpoint import read_checkpoint


def test_reads_the_real_minilm(minilm_dir):
    ckpt = read_checkpoint(minilm_dir)
    assert (ckpt.pooling, ckpt.normalize, ckpt.max_length, ckpt.width) == ("mean", True, 256, 384)
    assert ckpt.tokenizer_json.exists()


def test_reads_the_sentence_transformers_6_layout(tiny_decoder_dir):
    ckpt = read_checkpoint(tiny_decoder_dir)
    assert (ckpt.pooling, ckpt.normalize, ckpt.max_length, ckpt.width) == ("lasttoken", True, 96, 64)
    assert dict(ckpt.prompts)["query"].startswith("instruct:")


def test_bare_checkpoint_needs_a_pooling_mode(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8, "max_position_embeddings": 64}))
    with pytest.raises(ValueError, match="pass --pooling"):
        read_checkpoint(tmp_path)
    assert read_checkpoint(tmp_path, pooling="cls").max_length == 64


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path)
