from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from nestrank.export.triton_config import (
    python_model_config,
    read_config,
    string_parameters,
    write_bytes_warmup,
    write_config,
)

REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"


def test_build_write_parse_round_trip(tmp_path):
    config = python_model_config(
        "m",
        inputs=[("text", mc.TYPE_STRING, [1])],
        outputs=[("embeddings", mc.TYPE_FP32, [-1])],
        max_batch_size=32,
        parameters={"width": "384"},
        instance_count=2,
        warmup={"text": "text"},
    )
    write_config(config, tmp_path)
    parsed = read_config(tmp_path)
    assert parsed == config
    assert parsed.backend == "python" and parsed.max_batch_size == 32
    assert parsed.instance_group[0].count == 2 and parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert parsed.dynamic_batching.max_queue_delay_microseconds > 0
    assert parsed.model_warmup[0].inputs["text"].input_data_file == "text"
    assert string_parameters(parsed) == {"width": "384"}


def test_bytes_warmup_layout(tmp_path):
    write_bytes_warmup(tmp_path, "text", [b"abc", b"de"])
    blob = (tmp_path / "warmup" / "text").read_bytes()
    assert blob == np.uint32(3).tobytes() + b"abc" + np.uint32(2).tobytes() + b"de"


def _model_dirs():
    return sorted(p for p in REPOSITORY.iterdir() if (p / "config.pbtxt").exists()) if REPOSITORY.is_dir() else []


@pytest.mark.parametrize("model_dir", _model_dirs(), ids=lambda p: p.name)
def test_every_config_in_the_repository_parses(model_dir):
    config = read_config(model_dir)
    assert config.name == model_dir.name
    assert config.input and config.output
    assert (model_dir / "1" / "model.py").exists()
    for sample in config.model_warmup:
        for tensor_name, spec in sample.inputs.items():
            assert tensor_name in {t.name for t in config.input}
            assert (model_dir / "warmup" / spec.input_data_file).exists()
