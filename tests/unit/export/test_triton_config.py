"""config.pbtxt through model_config_pb2: built from the contract's signatures, written, parsed back; and every
config of a repository exported here (embedder and reranker) parses and points at what it needs."""

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from nestrank import __version__
from nestrank.export.embedder import export_embedder
from nestrank.export.triton_config import (
    exported_by,
    python_model_config,
    read_config,
    string_parameters,
    write_bytes_warmup,
    write_config,
)
from nestrank.protocol.embedding import EMBEDDING_OUTPUTS, embed_signature
from nestrank.protocol.tensors import NUMPY
from tests.names import reranker_config


def test_build_write_parse_round_trip(tmp_path):
    config = python_model_config("m", embed_signature(32), parameters={"width": "384", "max_queue_wait_s": "12.5"},
                                 instance_count=2, warmup={"text": "text"})  # fmt: skip
    write_config(config, tmp_path)
    parsed = read_config(tmp_path)
    assert parsed == config
    assert parsed.backend == "python" and parsed.max_batch_size == 32
    assert parsed.instance_group[0].count == 2 and parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert parsed.dynamic_batching.max_queue_delay_microseconds > 0
    assert parsed.dynamic_batching.default_queue_policy.default_timeout_microseconds == 12_500_000  # the limit's
    assert parsed.model_warmup[0].inputs["text"].input_data_file == "text"
    assert string_parameters(parsed)["width"] == "384" and exported_by(parsed) == __version__


def test_each_reranker_model_queues_as_long_as_its_limit_says():
    from nestrank.export.reranker import model_configs

    default = model_configs("k", reranker_config(), 64)
    waits = {name: c.dynamic_batching.default_queue_policy.default_timeout_microseconds for name, c in default.items()}
    assert waits == {"k_encode": 30_000_000, "k_score": 30_000_000, "k": 30_000_000}
    config = reranker_config(max_queue_wait_s=5)
    for model in model_configs("k", config, 64).values():
        assert model.dynamic_batching.default_queue_policy.default_timeout_microseconds == 5_000_000
        assert string_parameters(model)["max_queue_wait_s"] == "5"


def test_every_output_declares_the_dtype_it_returns():
    """One output per precision's dtype: the metadata never says FP32 for an int8 answer."""
    from nestrank.protocol.embedding import OUTPUT_DTYPES

    outputs = {t.name: t.numpy_dtype for t in embed_signature(8).outputs}
    for precision, name in EMBEDDING_OUTPUTS.items():
        assert outputs[name] == OUTPUT_DTYPES[precision]
    assert set(outputs) == set(EMBEDDING_OUTPUTS.values())
    assert set(NUMPY) >= {t.datatype for t in embed_signature(8).outputs}


def test_bytes_warmup_layout(tmp_path):
    write_bytes_warmup(tmp_path, "text", [b"abc", b"de"])
    blob = (tmp_path / "warmup" / "text").read_bytes()
    assert blob == np.uint32(3).tobytes() + b"abc" + np.uint32(2).tobytes() + b"de"


@pytest.fixture(scope="module")
def built_repository(tmp_path_factory, tiny_decoder_dir, reranker_exports):  # slow: exports two rerankers
    """Model directories exported here: an embedder, and the session's rerankers (three models each)."""
    embedder = export_embedder(tiny_decoder_dir, "embedder", tmp_path_factory.mktemp("repo"), log=lambda _: None)
    return [embedder.model_dir, *(d for export in reranker_exports.values() for d in export.model_dirs)]


@pytest.mark.slow
def test_every_config_of_an_exported_repository_parses(built_repository):
    assert len(built_repository) == 7
    for model_dir in built_repository:
        config = read_config(model_dir)
        assert config.name == model_dir.name and config.input and config.output
        assert exported_by(config) == __version__
        stub = (model_dir / "1" / "model.py").read_text()
        assert "from nestrank.serving.triton." in stub and len(stub.splitlines()) < 15  # a stub, not a copy
        for sample in config.model_warmup:
            for tensor_name, spec in sample.inputs.items():
                assert tensor_name in {t.name for t in config.input}
                assert (model_dir / "warmup" / spec.input_data_file).exists()
