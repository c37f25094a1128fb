"""On a CUDA GPU (skipped without one): the same exported graphs served through ONNX Runtime CUDA, against the CPU
fp32 reference, within the bounds the README documents. `pytest -m gpu` runs exactly these."""

import numpy as np
import onnxruntime as ort
import pytest

from nestrank.texts import PARITY_TEXTS
from tests.names import KALM, TINY_T5

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="needs onnxruntime-gpu and a CUDA GPU"),
]  # fmt: skip
CPU, CUDA = ("CPUExecutionProvider",), ("CUDAExecutionProvider",)
EMBED_MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999}  # GPU against CPU fp32
RERANK_MAX_SCORE_DIFF = 1e-3  # the fp32 graphs on the GPU (TF32 matmuls) against the CPU


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_embeddings_on_the_gpu_match_the_cpu_fp32_reference(minilm_dir, tmp_path, precision):
    from nestrank.export.embedder import export_embedder
    from nestrank.serving.pipeline.embedder import Embedder

    reference = export_embedder(minilm_dir, "fp32", tmp_path, log=lambda _: None)
    served = export_embedder(minilm_dir, precision, tmp_path, precision=precision, log=lambda _: None)
    cpu = Embedder.load(reference.model_dir / "1", reference.config, providers=CPU)
    gpu = Embedder.load(served.model_dir / "1", served.config, providers=CUDA)
    assert gpu.session.device == "cuda"  # IO binding path
    cosines = np.sum(cpu.embed(list(PARITY_TEXTS)) * gpu.embed(list(PARITY_TEXTS)), axis=1)
    assert cosines.min() >= EMBED_MIN_COSINE[precision], cosines.min()


@pytest.mark.parametrize("name", [KALM, TINY_T5])
def test_rerank_scores_on_the_gpu_match_the_cpu_fp32_reference(reranker_exports, name):
    from nestrank.serving.pipeline.reranker import FBNLReranker
    from nestrank.serving.pipeline.scorer import sigmoid

    export = reranker_exports[name]
    repository = export.model_dirs[0].parent
    cpu = FBNLReranker.from_repository(repository, name, export.config, providers=CPU)
    gpu = FBNLReranker.from_repository(repository, name, export.config, providers=CUDA)
    assert cpu.encoder.session.device is None and gpu.encoder.session.device == "cuda"  # two devices, for real
    documents = list(PARITY_TEXTS)
    for ratio in export.config.ratios:
        want = cpu.margins("what is served here?", documents, ratio)
        got = gpu.margins("what is served here?", documents, ratio)
        assert np.abs(sigmoid(got) - sigmoid(want)).max() <= RERANK_MAX_SCORE_DIFF, ratio
