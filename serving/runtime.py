"""ONNX Runtime sessions: TensorRT → CUDA → CPU, whichever this host has."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def pick_providers(requested: tuple[str, ...] | None = None) -> list:
    """Providers in preference order, limited to those this onnxruntime build offers."""
    available = set(ort.get_available_providers())
    chosen = [p for p in (requested or PREFERRED_PROVIDERS) if p in available]
    if not chosen:
        raise RuntimeError(f"none of {requested} is available; this build offers {sorted(available)}")
    return chosen


def create_session(
    model_path: str | Path,
    *,
    intra_op_threads: int = 0,
    providers: tuple[str, ...] | None = None,
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads  # 0: one per physical core
    options.inter_op_num_threads = 1
    chosen = pick_providers(providers)
    with_options = []
    for name in chosen:
        if name == "TensorrtExecutionProvider":
            # Engines are built per shape profile on first use; keep them beside the model.
            cache = str(Path(model_path).parent / "trt_cache")
            with_options.append((name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache}))
        else:
            with_options.append(name)
    return ort.InferenceSession(str(model_path), sess_options=options, providers=with_options)
