"""Triton `config.pbtxt` built and parsed through `tritonclient`'s `model_config_pb2` (no string templates)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from nestrank.protocol import parameters as protocol_parameters
from nestrank.protocol.headers import VERSION_PARAMETER
from nestrank.protocol.parameters import exported_version
from nestrank.protocol.tensors import Signature

CONFIG_FILE = "config.pbtxt"
WARMUP_DIR = "warmup"


def python_model_config(
    name: str,
    signature: Signature,
    *,
    parameters: Mapping[str, str],
    instance_count: int = 1,
    max_queue_delay_us: int = 2000,
    warmup: Mapping[str, str] | None = None,
    max_queue_size: int | None = None,
) -> mc.ModelConfig:
    """A Python-backend model with dynamic batching on CPU instances; its inputs and outputs are the contract's
    `signature`, and its parameters record the nestrank version that wrote it.

    `warmup` maps an input name to a file under `warmup/` holding one serialized batch-1 value.

    The queue is bounded twice, as Triton allows: in requests (`max_queue_size`, default `default_queue_size`)
    and in time (the model's `max_queue_wait_s` limit, from `parameters`: the one bound the model's own scheduler
    keeps too). Past either, Triton refuses at once with UNAVAILABLE ("Exceeds maximum queue size", "Request
    timeout expired"), which the clients read as overload and back off from, instead of latency growing without
    bound. Triton counts requests, not texts, so the count bound is generous and the
    time bound does the work under heavy requests.
    """
    from nestrank import __version__

    config = mc.ModelConfig(name=name, backend="python", max_batch_size=signature.max_batch_size)
    for tensor in signature.inputs:
        config.input.add(name=tensor.name, data_type=data_type(tensor.datatype), dims=list(tensor.dims),
                         optional=tensor.optional, allow_ragged_batch=tensor.ragged_batch)  # fmt: skip
    for tensor in signature.outputs:
        config.output.add(name=tensor.name, data_type=data_type(tensor.datatype), dims=list(tensor.dims))
    if signature.max_batch_size > 0:  # the dynamic batcher needs a batch dimension
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
        queue = config.dynamic_batching.default_queue_policy
        queue.max_queue_size = max_queue_size or default_queue_size(signature.max_batch_size)
        queue.timeout_action = mc.ModelQueuePolicy.REJECT
        queue.default_timeout_microseconds = int(json.loads(parameters["max_queue_wait_s"]) * 1e6)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instance_count)
    for key, value in {**parameters, VERSION_PARAMETER: json.dumps(__version__)}.items():
        config.parameters[key].string_value = value
    if warmup:
        sample = config.model_warmup.add(name="warmup", batch_size=1)
        by_name = {t.name: t for t in config.input}
        for tensor_name, file_name in warmup.items():
            spec = sample.inputs[tensor_name]
            spec.data_type = by_name[tensor_name].data_type
            spec.dims.extend(max(1, d) for d in by_name[tensor_name].dims)  # a variable dimension: one value
            spec.input_data_file = file_name
    return config


def data_type(datatype: str) -> int:
    """The contract's datatype name (FP32, BYTES) → model_config_pb2's enum (TYPE_FP32, TYPE_STRING)."""
    return mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def write_model(model_dir: str | Path, config: mc.ModelConfig, glue: str) -> None:
    """config.pbtxt, and version 1's model.py: a stub importing the installed nestrank's `glue`."""
    from nestrank import __version__
    from nestrank.serving.triton import glue_stub

    model_dir = Path(model_dir)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.py").write_text(glue_stub(glue, __version__), encoding="utf-8")
    write_config(config, model_dir)


def exported_by(config: mc.ModelConfig) -> str | None:
    """The nestrank version that exported a model (None: one from before versions were recorded)."""
    return exported_version(string_parameters(config))


def default_queue_size(max_batch_size: int) -> int:
    """Requests that may wait: four full batches of one-item requests, at least 64 (all-MiniLM-L6-v2: 1,024;
    TEI's default is 512 concurrent requests)."""
    return max(64, 4 * max_batch_size)


def write_config(config: mc.ModelConfig, model_dir: str | Path) -> Path:
    path = Path(model_dir) / CONFIG_FILE
    path.write_text(text_format.MessageToString(config), encoding="utf-8")
    return path


def read_config(model_dir: str | Path) -> mc.ModelConfig:
    return text_format.Parse((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"), mc.ModelConfig())


def string_parameters(config: mc.ModelConfig) -> dict[str, str]:
    """The contract's reader, over the JSON form Triton gives models and clients."""
    return protocol_parameters.string_parameters(json_format.MessageToDict(config, preserving_proto_field_name=True))


def write_bytes_warmup(model_dir: str | Path, file_name: str, values: Sequence[bytes]) -> None:
    """Triton's serialized BYTES layout: each element as a 4-byte little-endian length, then its bytes."""
    folder = Path(model_dir) / WARMUP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    blob = b"".join(np.uint32(len(v)).tobytes() + v for v in values)
    (folder / file_name).write_bytes(blob)
