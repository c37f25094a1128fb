"""Checkpoint → ONNX (encoder + pooling + normalize) → parity gate → Triton model directory."""

from __future__ import annotations

import inspect
import math
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
from nestrank.protocol.embedding import EmbedderConfig, embed_signature, parse_options
from nestrank.serving.pipeline.embedder import (
    CALIBRATION_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    Embedder,
    calibration_key,
    segment_file,
)
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
        # max(count, 1e-9), as clamp(min=1e-9), without the one-sided Clip that symbolic shape inference rejects
        return (states * weights).sum(1) / torch.maximum(weights.sum(1), torch.full_like(weights[:, 0], 1e-9))
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


# Families whose layers the depth ladder can cut (embeddings, then `encoder.layer[i]`) and that ONNX Runtime's
# transformer optimizer fuses as "bert" (attention, skip-layer-norm, GELU, embed-layer-norm).
LADDER_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "camembert")
FUSED_FAMILIES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert", "camembert": "bert"}


def parse_layers(text: str | None, num_layers: int) -> tuple[int, ...]:
    """`--layers 2,3,4,6` / `all` / None → the ladder, ascending, the full depth included (() for None: one graph)."""
    if text is None or str(text).strip() == "":
        return ()
    if str(text).strip().lower() == "all":
        return tuple(range(1, num_layers + 1))
    try:
        ladder = {int(k) for k in str(text).split(",") if k.strip()}
    except ValueError:
        raise ValueError(f"--layers takes comma-separated depths or 'all', got {text!r}") from None
    bad = sorted(k for k in ladder if not 0 < k <= num_layers)
    if bad:
        raise ValueError(f"--layers {bad} outside 1..{num_layers} (the checkpoint has {num_layers} layers)")
    return tuple(sorted(ladder | {num_layers}))


class Segment(torch.nn.Module):
    """Layers [start, end) of a BERT-family encoder, then pooling + normalize at depth `end`. The first segment
    reads (input_ids, attention_mask) and runs the embeddings; later ones read (hidden_states, attention_mask).
    Every segment but the last also returns its token states for the next."""

    def __init__(self, backbone: torch.nn.Module, start: int, end: int, pooling: str, last: bool):
        super().__init__()
        self.embeddings = backbone.embeddings if start == 0 else None
        self.layers = torch.nn.ModuleList(backbone.encoder.layer[start:end])
        self.pooling = pooling
        self.last = last
        self.takes_token_type_ids = start == 0 and "token_type_ids" in inspect.signature(
            backbone.embeddings.forward).parameters  # fmt: skip

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor):
        if self.embeddings is not None:
            extra = {"token_type_ids": torch.zeros_like(x)} if self.takes_token_type_ids else {}
            x = self.embeddings(input_ids=x, **extra)
        # The additive mask as BERT has always built it: the pattern ONNX Runtime's attention fusion matches.
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = bert_layer(layer, x, additive)
        pooled = pool(x, attention_mask, self.pooling)
        return (l2_normalize(pooled), pooled) if self.last else (l2_normalize(pooled), pooled, x)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """F.normalize's arithmetic (x / max(|x|, 1e-12)) in ops ONNX Runtime's symbolic shape inference follows (not
    its Expand, nor opset 18's ReduceL2): without that inference the optimizer fuses no skip-layer-norm."""
    norm = torch.sqrt((x * x).sum(dim=-1, keepdim=True))
    return x / torch.maximum(norm, torch.full_like(norm, 1e-12))


def bert_layer(layer: torch.nn.Module, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
    """One BERT-family encoder layer (eager, post-norm) written out, with the layer's own weights: the same
    arithmetic as transformers' eager path, traced into the graph shape ONNX Runtime's transformer optimizer
    fuses (Attention, SkipLayerNormalization, Gelu)."""
    attention = layer.attention.self
    heads, head_size = attention.num_attention_heads, attention.attention_head_size

    def split_heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.size()[:-1] + (heads, head_size)).permute(0, 2, 1, 3)

    q, k, v = (split_heads(proj(x)) for proj in (attention.query, attention.key, attention.value))
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_size) + additive_mask
    context = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
    context = context.view(context.size()[:-2] + (heads * head_size,))
    out = layer.attention.output
    h = out.LayerNorm(out.dense(context) + x)
    inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(h))
    return layer.output.LayerNorm(layer.output.dense(inner) + h)


def export_segment(module: Segment, path: Path, vocab_size: int, width: int) -> None:
    input_ids = torch.randint(5, max(6, vocab_size), (2, 16))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    first = module.embeddings is not None
    x = input_ids if first else torch.randn(2, 16, width)
    x_name = g.INPUT_IDS if first else g.HIDDEN_STATES
    outputs = [g.EMBEDDINGS, g.POOLED_EMBEDDINGS] + ([] if module.last else [g.NEXT_HIDDEN_STATES])
    axes = {x_name: {0: "batch", 1: "sequence"}, g.ATTENTION_MASK: {0: "batch", 1: "sequence"},
            g.EMBEDDINGS: {0: "batch"}, g.POOLED_EMBEDDINGS: {0: "batch"}}  # fmt: skip
    if not module.last:
        axes[outputs[2]] = {0: "batch", 1: "sequence"}
    torch.onnx.export(module, (x, attention_mask), str(path), input_names=[x_name, g.ATTENTION_MASK],
                      output_names=outputs, dynamic_axes=axes, opset_version=18, dynamo=False)  # fmt: skip


def fuse_graph(path: Path, family: str, num_heads: int, hidden_size: int) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer on `path`, in place; the fused operators it made, by type."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(path), model_type=FUSED_FAMILIES[family], num_heads=num_heads,
                               hidden_size=hidden_size, opt_level=0)  # fmt: skip
    optimized.save_model_to_file(str(path))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


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


def reference_embeddings(ckpt: EmbedderCheckpoint, texts: list[str], max_length: int,
                         depths: tuple[int | None, ...] = (None,)) -> dict[int | None, np.ndarray]:  # fmt: skip
    """sentence-transformers on the checkpoint, as its users would run it, with its encoder cut to its first k
    layers for each depth k (None: the whole model): {depth: embeddings}."""
    from sentence_transformers import SentenceTransformer, models

    if (ckpt.root / "modules.json").exists():
        model = SentenceTransformer(str(ckpt.root), device="cpu")
    else:
        transformer = models.Transformer(str(ckpt.transformer_dir))
        pooling = models.Pooling(ckpt.width, pooling_mode=ckpt.pooling)
        model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    model.max_seq_length = max_length
    out = {}
    for depth in depths:
        encoder = model[0].auto_model.encoder if depth is not None else None
        full = encoder.layer if encoder is not None else None
        try:
            if encoder is not None:
                encoder.layer = full[:depth]  # the first k layers, as 2D Matryoshka training reads them
            out[depth] = model.encode(texts, batch_size=4, convert_to_numpy=True, normalize_embeddings=True)
        finally:
            if encoder is not None:
                encoder.layer = full
    return out


@dataclass(frozen=True)
class ParityReport:
    precision: str
    min_cosine: float
    mean_cosine: float
    texts: int
    layers: int | None = None  # the depth checked (None: the full model)

    def passed(self) -> bool:
        return (
            self.min_cosine >= PARITY_MIN_COSINE[self.precision]
            and self.mean_cosine >= PARITY_MEAN_COSINE[self.precision]
        )

    def __str__(self) -> str:
        depth = "" if self.layers is None else f" at depth {self.layers}"
        return (
            f"parity {self.precision}{depth}: min cosine {self.min_cosine:.7f} "
            f"(gate {PARITY_MIN_COSINE[self.precision]}), mean {self.mean_cosine:.7f} "
            f"(gate {PARITY_MEAN_COSINE[self.precision]}) over {self.texts} texts"
        )


def check_parity(embedder: Embedder, reference: np.ndarray, texts: list[str], precision: str,
                 layers: int | None = None) -> ParityReport:  # fmt: skip
    ours = embed_at(embedder, texts, layers)
    cosines = np.sum(ours * reference, axis=1)  # both unit length
    return ParityReport(precision, float(cosines.min()), float(cosines.mean()), len(texts), layers)


def embed_at(embedder: Embedder, texts: list[str], layers: int | None, dimensions: int | None = None) -> np.ndarray:
    """Normalised float32 embeddings at a depth (None: full) through the serving pipeline."""
    options = parse_options({"layers": layers, **({"dimensions": dimensions} if dimensions else {})}, embedder.config)
    job = embedder.pre(texts, options)
    embedder.core([job])
    return embedder.post(job)


EMBEDDER_STAGES = ("loading the checkpoint", "exporting the ONNX graph", "checking parity", "calibrating, writing")


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path
    config: EmbedderConfig
    parity: ParityReport  # the full depth
    parities: tuple[ParityReport, ...] = ()  # every depth on the ladder, the full one last
    fusions: dict | None = None  # fused operators by type, or None when the graph was not fused


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
    layers: str | tuple[int, ...] | None = None,
    fuse: bool = True,
    log=print,
    progress=lambda stage: None,
) -> ExportResult:
    """Exports, gates on parity, and only then writes `<repository>/<name>/`. `log` gets the parity figures,
    `progress` the name of each stage (EMBEDDER_STAGES) as it starts. `layers`: the depth ladder (`"2,3,6"`, `"all"`
    or a tuple; None: the full depth only, one graph). `fuse`: run ONNX Runtime's transformer optimizer on the
    graphs where the family is one it fuses (FUSED_FAMILIES), before any precision conversion."""
    progress(EMBEDDER_STAGES[0])
    ckpt = read_checkpoint(checkpoint, pooling)
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(ckpt.transformer_dir), attn_implementation="eager").eval()
    family = getattr(backbone.config, "model_type", "")
    num_layers = int(getattr(backbone.config, "num_hidden_layers", 0) or 0)
    ladder = parse_layers(",".join(map(str, layers)) if isinstance(layers, tuple) else layers, num_layers)
    if len(ladder) > 1 and (family not in LADDER_FAMILIES or not hasattr(backbone, "encoder")):
        raise ValueError(f"--layers: depth ladders are exported for {', '.join(LADDER_FAMILIES)}; this checkpoint "
                         f"is {family or 'of an unknown family'}")  # fmt: skip
    fused = fuse and family in FUSED_FAMILIES
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
        num_layers=num_layers,
        layers=ladder if len(ladder) > 1 else (),
        fused=fused,
    )
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".export-{name}-", dir=repository.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    fusions: dict[str, int] | None = {} if fused else None
    try:
        version_dir = staging / "1"
        version_dir.mkdir()
        progress(EMBEDDER_STAGES[1])
        graphs = []
        with torch.no_grad():
            if family in LADDER_FAMILIES and hasattr(backbone, "encoder"):  # the layers written out (fusable)
                ends = config.layers or (num_layers,)
                for start, end in zip((0, *ends[:-1]), ends):
                    path = version_dir / (segment_file(end) if config.layers else MODEL_FILE)
                    export_segment(Segment(backbone, start, end, ckpt.pooling, end == num_layers).eval(), path,
                                   backbone.config.vocab_size, ckpt.width)  # fmt: skip
                    graphs.append(path)
            else:
                graphs.append(version_dir / MODEL_FILE)
                export_onnx(PooledEncoder(backbone, ckpt.pooling).eval(), graphs[0], backbone.config.vocab_size)
        for path in graphs:
            if fused:
                for op, count in fuse_graph(path, family, backbone.config.num_attention_heads,
                                            backbone.config.hidden_size).items():  # fmt: skip
                    fusions[op] = fusions.get(op, 0) + count
            if precision != "fp32":
                convert_precision(path, precision)  # int8 quantizes the fused graph
        if fused:
            log("fused (ONNX Runtime transformer optimizer): "
                + ", ".join(f"{op} x{n}" for op, n in sorted(fusions.items())))  # fmt: skip
        shutil.copy(ckpt.tokenizer_json, version_dir / TOKENIZER_FILE)

        progress(EMBEDDER_STAGES[2])
        embedder = Embedder.load(version_dir, config, providers=("CPUExecutionProvider",))
        texts = list(PARITY_TEXTS)
        depths = tuple(None if k == num_layers else k for k in config.layers) or (None,)
        references = reference_embeddings(ckpt, texts, max_length, depths)
        reports = []
        for depth in depths:
            report = check_parity(embedder, references[depth], texts, precision, depth)
            log(str(report))
            reports.append(report)
        failed = [r for r in reports if not r.passed()]
        if failed:
            raise ParityError(f"{name}: {failed[0]}; nothing written" + (" (try --no-fuse)" if fused else ""))

        # Fixed int8/uint8 ranges per served dimension and depth, from this model's own outputs.
        progress(EMBEDDER_STAGES[3])
        calibration_texts = realistic_texts(512, seed=1234)
        jobs = [embedder.pre(calibration_texts, parse_options({"layers": d}, config)) for d in depths]
        embedder.core(jobs)  # one pass: every depth leaves the chain where it ends
        ranges = {}
        for depth, job in zip(depths, jobs):
            vectors = embedder.post(job)
            for d in config.dimensions:
                ranges[calibration_key(d, depth)] = calibration_ranges(truncate_dimensions(vectors, d, True))
        np.savez(version_dir / CALIBRATION_FILE, **ranges)
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
    return ExportResult(target, config, reports[-1], tuple(reports), fusions)
