"""In-process ONNX Runtime, no server: each (model, depth) on the same texts, alternated round by round, best of N.
What fusion and depth change in the graphs themselves, without gRPC, Triton or the scheduler.

Run: `.venv/bin/python -m nestrank.bench.inprocess --repository R --models minilm-layers,minilm-layers-unfused
--layers 3,6 --texts 256 --rounds 3`
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nestrank.bench.inprocess")
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--models", required=True, help="comma-separated; the first is the baseline")
    p.add_argument("--layers", default="", help="depths, e.g. 3,6 (default: the full depth)")
    p.add_argument("--texts", type=int, default=256, help="texts of the realistic mix")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    from nestrank.export.embedder import embed_at
    from nestrank.export.triton_config import read_config, string_parameters
    from nestrank.protocol.embedding import EmbedderConfig
    from nestrank.serving.pipeline.embedder import Embedder
    from nestrank.texts import realistic_texts

    models = [m for m in args.models.split(",") if m]
    embedders = {}
    for model in models:
        config = EmbedderConfig.from_parameters(string_parameters(read_config(args.repository / model)))
        embedders[model] = Embedder.load(args.repository / model / "1", config)
    depths = [int(k) for k in args.layers.split(",") if k.strip()] or [None]
    texts = realistic_texts(args.texts, seed=7)
    for embedder in embedders.values():  # warm-up
        embed_at(embedder, texts[:32], None)
    best: dict[tuple[str, int | None], float] = {}
    for _ in range(args.rounds):
        for model, embedder in embedders.items():
            for k in depths:
                depth = None if k == embedder.config.num_layers else k
                started = time.perf_counter()
                embed_at(embedder, texts, depth)
                elapsed = time.perf_counter() - started
                best[(model, k)] = min(best.get((model, k), elapsed), elapsed)
    print(f"{'model':<32}{'depth':>6}{'best s':>9}{'texts/s':>9}{'speed vs ' + models[0]:>30}")
    for (model, k), seconds in best.items():
        ratio = best[(models[0], k)] / seconds
        print(f"{model:<32}{k or 'full':>6}{seconds:>9.2f}{len(texts) / seconds:>9.1f}{ratio:>29.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
