"""`python -m nestrank.bench.perf_inputs`: perf_analyzer's `--input-data` file of real texts for an embedder (its one
input, `text`, a string per request), drawn from the realistic mix the benchmarks use (docs/load-testing.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from nestrank.protocol.embedding import TEXT
from nestrank.texts import realistic_texts


def input_data(texts: Sequence[str]) -> dict:
    """perf_analyzer's JSON: one entry per request, sent in turn."""
    return {"data": [{TEXT: [text]} for text in texts]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nestrank.bench.perf_inputs", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("texts.json"))
    p.add_argument("--count", type=int, default=200, help="texts (perf_analyzer cycles through them)")
    args = p.parse_args(argv)
    args.out.write_text(json.dumps(input_data(realistic_texts(args.count))), encoding="utf-8")
    print(f"wrote {args.count} texts to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
