"""Weight precision of an exported ONNX graph (int8 for CPU, fp16 for GPU), and ONNX writes of any size.

Graphs past protobuf's 2 GiB limit (KaLM-Reranker-V1 Small and Large in fp32, and their fp16/int8 forms
before conversion) keep their weights in `<graph>.data` beside the graph.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

EXTERNAL_DATA_BYTES = 1 << 30  # weights above this go to `<graph>.data`; protobuf refuses messages over 2 GiB


def data_file(graph: Path) -> Path:
    return graph.with_name(graph.name + ".data")


def graph_bytes(graph: Path) -> int:
    """The graph and its external weights on disk."""
    return sum(p.stat().st_size for p in (graph, data_file(graph)) if p.exists())


def save_onnx(model, graph: Path) -> None:
    import onnx

    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights > EXTERNAL_DATA_BYTES:
        onnx.save(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data_file(graph).name, size_threshold=1024)  # fmt: skip
    else:
        onnx.save(model, str(graph))


def convert_precision(graph: Path, precision: str) -> None:
    """Rewrites `graph` (and its `<graph>.data`, if any) in place with `precision` weights."""
    graph = Path(graph)
    if precision not in ("fp16", "int8"):
        raise ValueError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    with tempfile.TemporaryDirectory(dir=graph.parent) as tmp:
        out = Path(tmp) / graph.name
        if precision == "int8":
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel keeps retrieval quality (mean cosine ~0.99 vs ~0.96 per-tensor). A fused graph's
            # com.microsoft operators (Attention, SkipLayerNormalization) defeat ONNX shape inference, so the
            # quantizer is told that the tensors it cannot type are float32 (all of them are, before quantizing).
            quantize_dynamic(str(graph), str(out), weight_type=QuantType.QInt8, per_channel=True,
                             use_external_data_format=graph_bytes(graph) > EXTERNAL_DATA_BYTES,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip
        else:
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            save_onnx(convert_float_to_float16(onnx.load(str(graph)), keep_io_types=True), out)
        data_file(graph).unlink(missing_ok=True)
        for path in Path(tmp).iterdir():
            path.replace(graph.parent / path.name)


def move_to_own_file(graph: Path, tensor_name: str, file_name: str) -> None:
    """Rewrites `graph` so that the weights of `tensor_name` live alone in `file_name` beside it (the others
    in `<graph>.data`), so that two graphs holding the same tensor can point at one file."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data, set_external_data

    graph = Path(graph)
    model = onnx.load(str(graph))  # every weight in memory: the files on disk can be rewritten
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=data_file(graph).name)
    (tensor,) = [t for t in model.graph.initializer if t.name == tensor_name]
    set_external_data(tensor, location=file_name)
    for old in (data_file(graph), graph.with_name(file_name)):
        old.unlink(missing_ok=True)
    onnx.save_model(model, str(graph))
