"""Checkpoint → ONNX (encoder + pooling + normalize) → parity gate → Triton model directory."""

from __future__ import annotations

import inspect
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nestrank.export import ParityError
from nestrank.export.checkpoint import EmbedderCheckpoint, read_checkpoint
from nestrank.export.precision import convert_precision
from nestrank.export.triton_config import python_model_config, write_bytes_warmup, write_model
from nestrank.protocol import graphs as g
from nestrank.protocol.embedding import EmbedderConfig, embed_signature
from nestrank.serving.pipeline.embedder import CALIBRATION_FILE, MODEL_FILE, TOKENIZER_FILE, Embedder
from nestrank.serving.pipeline.matryoshka import default_dimensions, truncate_dimensions
from nestrank.serving.pipeline.quantization import calibration_ranges
from nestrank.texts import PARITY_TEXTS, realistic_texts

# Minimum cosine to the PyTorch reference, per weight precision, over PARITY_TEXTS.
# fp32 is the gate; int8 (dynamic, per-channel) and fp16 bounds are what those
# precisions reach on real checkpoints (see README, "Parity").
PARITY_MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.95}
PARITY_MEAN_COSINE = {"fp32": 0.99999, "fp16": 0.9995, "int8": 0.98}


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "cls":
        return states[:, 0]
    if mode == "mean":
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if mode == "lasttoken":
        # The last position whose mask is 1, for either padding side.
        positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
        last = (positions * mask).argmax(dim=1)
        return states[torch.arange(states.shape[0], device=states.device), last]
    raise ValueError(f"unknown pooling {mode!r}")


class PooledEncoder(torch.nn.Module):
    """The exported graph: (input_ids, attention_mask) → (embeddings L2-normalised, pooled_embeddings)."""

    def __init__(self, backbone: torch.nn.Module, pooling: str):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.takes_token_type_ids = "token_type_ids" in inspect.signature(backbone.forward).parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.takes_token_type_ids else {}
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        pooled = pool(states, attention_mask, self.pooling)
        return F.normalize(pooled, p=2, dim=-1), pooled


def export_onnx(module: torch.nn.Module, path: Path, vocab_size: int) -> None:
    input_ids = torch.randint(5, max(6, vocab_size), (2, 16))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    torch.onnx.export(
        module,
        (input_ids, attention_mask),
        str(path),
        input_names=list(g.TOKEN_INPUTS),
        output_names=[g.EMBEDDINGS, g.POOLED_EMBEDDINGS],
        dynamic_axes={
            g.INPUT_IDS: {0: "batch", 1: "sequence"},
            g.ATTENTION_MASK: {0: "batch", 1: "sequence"},
            g.EMBEDDINGS: {0: "batch"},
            g.POOLED_EMBEDDINGS: {0: "batch"},
        },
        opset_version=18,
        dynamo=False,
    )


def reference_embeddings(ckpt: EmbedderCheckpoint, texts: list[str], max_length: int) -> np.ndarray:
    """sentence-transformers on the checkpoint, as its users would run it."""
    from sentence_transformers import SentenceTransformer, models

    if (ckpt.root / "modules.json").exists():
        model = SentenceTransformer(str(ckpt.root), device="cpu")
    else:
        transformer = models.Transformer(str(ckpt.transformer_dir))
        pooling = models.Pooling(ckpt.width, pooling_mode=ckpt.pooling)
        model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    model.max_seq_length = max_length
    return model.encode(texts, batch_size=4, convert_to_numpy=True, normalize_embeddings=True)


@dataclass(frozen=True)
class ParityReport:
    precision: str
    min_cosine: float
    mean_cosine: float
    texts: int

    def passed(self) -> bool:
        return (
            self.min_cosine >= PARITY_MIN_COSINE[self.precision]
            and self.mean_cosine >= PARITY_MEAN_COSINE[self.precision]
        )

    def __str__(self) -> str:
        return (
            f"parity {self.precision}: min cosine {self.min_cosine:.7f} "
            f"(gate {PARITY_MIN_COSINE[self.precision]}), mean {self.mean_cosine:.7f} "
            f"(gate {PARITY_MEAN_COSINE[self.precision]}) over {self.texts} texts"
        )


def check_parity(embedder: Embedder, reference: np.ndarray, texts: list[str], precision: str) -> ParityReport:
    ours = embedder.embed(texts)
    cosines = np.sum(ours * reference, axis=1)  # both unit length
    return ParityReport(precision, float(cosines.min()), float(cosines.mean()), len(texts))


EMBEDDER_STAGES = ("loading the checkpoint", "exporting the ONNX graph", "checking parity", "calibrating, writing")


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path
    config: EmbedderConfig
    parity: ParityReport


def export_embedder(
    checkpoint: str | Path,
    name: str,
    repository: str | Path,
    *,
    precision: str = "fp32",
    max_length: int | None = None,
    dimensions: tuple[int, ...] | None = None,
    pooling: str | None = None,
    max_batch_size: int = 256,
    instance_count: int = 1,
    intra_op_threads: int = 0,
    tensorrt_fp16: bool = False,
    log=print,
    progress=lambda stage: None,
) -> ExportResult:
    """Exports, gates on parity, and only then writes `<repository>/<name>/`. `log` gets the parity figures,
    `progress` the name of each stage (EMBEDDER_STAGES) as it starts."""
    progress(EMBEDDER_STAGES[0])
    ckpt = read_checkpoint(checkpoint, pooling)
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(ckpt.transformer_dir), attn_implementation="eager").eval()
    max_length = max_length or ckpt.max_length
    config = EmbedderConfig(
        width=ckpt.width,
        max_length=max_length,
        pooling=ckpt.pooling,
        dimensions=dimensions or ckpt.matryoshka_dims or default_dimensions(ckpt.width),
        prompts=ckpt.prompts,
        default_prompt=ckpt.default_prompt,
        weights=precision,
        intra_op_threads=intra_op_threads,
        tensorrt_fp16=tensorrt_fp16,
    )
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".export-{name}-", dir=repository.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        version_dir = staging / "1"
        version_dir.mkdir()
        fp32_path = version_dir / MODEL_FILE
        progress(EMBEDDER_STAGES[1])
        with torch.no_grad():
            export_onnx(PooledEncoder(backbone, ckpt.pooling).eval(), fp32_path, backbone.config.vocab_size)
        if precision != "fp32":
            convert_precision(fp32_path, precision)
        shutil.copy(ckpt.tokenizer_json, version_dir / TOKENIZER_FILE)

        progress(EMBEDDER_STAGES[2])
        embedder = Embedder.load(version_dir, config, providers=("CPUExecutionProvider",))
        texts = list(PARITY_TEXTS)
        report = check_parity(embedder, reference_embeddings(ckpt, texts, max_length), texts, precision)
        log(str(report))
        if not report.passed():
            raise ParityError(f"{name}: {report}; nothing written")

        # Fixed int8/uint8 ranges per served dimension, from this model's own outputs.
        progress(EMBEDDER_STAGES[3])
        calibration = embedder.embed(realistic_texts(512, seed=1234))
        np.savez(
            version_dir / CALIBRATION_FILE,
            **{str(d): calibration_ranges(truncate_dimensions(calibration, d, True)) for d in config.dimensions},
        )
        write_bytes_warmup(staging, "text", ["nestrank warm-up text".encode()])
        model_config = python_model_config(
            name,
            embed_signature(max_batch_size),  # one output per precision's dtype
            parameters=config.to_parameters(),
            instance_count=instance_count,
            warmup={"text": "text"},
        )
        write_model(staging, model_config, "embed")
        target = repository / name
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return ExportResult(target, config, report)
