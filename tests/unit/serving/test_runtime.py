import onnxruntime as ort
import pytest

from nestrank.serving.runtime import pick_providers


def test_cpu_is_always_last_resort():
    providers = pick_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert providers == [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in ort.get_available_providers()]  # fmt: skip


def test_unavailable_providers_are_reported():
    with pytest.raises(RuntimeError, match="none of"):
        pick_providers(("NoSuchExecutionProvider",))


@pytest.mark.gpu
def test_cuda_session_matches_cpu(minilm_dir, tmp_path):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu and a CUDA GPU")
    import numpy as np

    from nestrank.export.embedder import export_embedder
    from nestrank.serving.embedder import Embedder
    from nestrank.texts import PARITY_TEXTS

    result = export_embedder(minilm_dir, "m", tmp_path, precision="fp16", log=lambda _: None)
    cpu = Embedder.load(result.model_dir / "1", result.config, providers=("CPUExecutionProvider",))
    gpu = Embedder.load(result.model_dir / "1", result.config, providers=("CUDAExecutionProvider",))
    cosines = np.sum(cpu.embed(list(PARITY_TEXTS)) * gpu.embed(list(PARITY_TEXTS)), axis=1)
    assert cosines.min() >= 0.999
