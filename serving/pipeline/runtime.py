"""ONNX Runtime sessions: TensorRT → CUDA → CPU, whichever this host has.

On a GPU:
- runs use IO binding: inputs are copied to the device once and outputs stay there until the run ends, then come
  back in one copy each (the pooled rows or margins, small next to the activations);
- TensorRT keeps its engines and timing cache under the model version directory, builds one optimization profile
  covering every shape the length buckets can produce (so no shape triggers a rebuild), and runs fp16 when the
  model config asks for it. Triton's warm-up at load builds the engines before the model reports ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TRT_ENGINE_DIR, TRT_TIMING_DIR = "trt_engines", "trt_timing"


def pick_providers(requested: tuple[str, ...] | None = None) -> list:
    """Providers in preference order, limited to those this onnxruntime build offers."""
    available = set(ort.get_available_providers())
    chosen = [p for p in (requested or PREFERRED_PROVIDERS) if p in available]
    if not chosen:
        raise RuntimeError(f"none of {requested} is available; this build offers {sorted(available)}")
    return chosen


@dataclass(frozen=True)
class ShapeProfile:
    """A TensorRT optimization profile: each input's smallest, typical and largest shape."""

    shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]

    def __post_init__(self):
        for name, low, opt, high in self.shapes:
            if not (len(low) == len(opt) == len(high) and all(1 <= a <= b <= c for a, b, c in zip(low, opt, high))):
                raise ValueError(f"{name}: need 1 <= min <= opt <= max in every dimension, got {low}, {opt}, {high}")

    @classmethod
    def token_batches(cls, names: Sequence[str], max_batch: int, max_length: int, max_tokens: int) -> ShapeProfile:
        """[batch, length] inputs cut by `length_buckets(max_batch, max_tokens)` from sequences of ≤ max_length
        tokens: every bucket lies in the box up to [max_batch, max_length]; opt is a full batch of 128 tokens."""
        length = min(128, max_length)
        opt = (max(1, min(max_batch, max_tokens // length)), length)
        return cls(tuple((n, (1, 1), opt, (max_batch, max_length)) for n in names))

    def provider_options(self) -> dict[str, str]:
        def shapes(i: int) -> str:
            return ",".join(f"{name}:{'x'.join(map(str, dims[i]))}" for name, *dims in self.shapes)

        return {"trt_profile_min_shapes": shapes(0), "trt_profile_opt_shapes": shapes(1),
                "trt_profile_max_shapes": shapes(2)}  # fmt: skip


def tensorrt_options(version_dir: Path, profile: ShapeProfile | None, fp16: bool) -> dict[str, str]:
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(version_dir / TRT_ENGINE_DIR),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(version_dir / TRT_TIMING_DIR),
        "trt_fp16_enable": str(bool(fp16)),
    }
    return {**options, **(profile.provider_options() if profile else {})}


class Session:
    """An ONNX Runtime session whose `run` uses IO binding on a GPU and plain `run` on the CPU."""

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.device = "cuda" if session.get_providers()[0] in GPU_PROVIDERS else None

    def run(self, output_names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self.device is None:
            return self.session.run(list(output_names), dict(feeds))
        return run_bound(self.session, output_names, feeds, self.device)

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def get_providers(self) -> list[str]:
        return self.session.get_providers()


def run_bound(session: ort.InferenceSession, output_names: Sequence[str], feeds: Mapping[str, np.ndarray],
              device: str) -> list[np.ndarray]:  # fmt: skip
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(array))
    for name in output_names:
        binding.bind_output(name, device)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def create_session(
    model_path: str | Path,
    *,
    intra_op_threads: int = 0,
    providers: tuple[str, ...] | None = None,
    profile: ShapeProfile | None = None,
    tensorrt_fp16: bool = False,
) -> Session:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # 0: one per physical core; the model's `intra_op_threads` limit (`nestrank serve --limit intra_op_threads=N`)
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: the model's own thread (which takes requests in and answers them)
    # and the server share these cores with the pool between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with_options = []
    for name in pick_providers(providers):
        if name == "TensorrtExecutionProvider":
            with_options.append((name, tensorrt_options(Path(model_path).parent, profile, tensorrt_fp16)))
        else:
            with_options.append(name)
    return Session(ort.InferenceSession(str(model_path), sess_options=options, providers=with_options))
