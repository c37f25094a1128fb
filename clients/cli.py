"""`nestrank embed "text" ... --dimensions 128 --precision int8`: prints one JSON line per text."""

from __future__ import annotations

import argparse
import json
import sys

from nestrank.clients.embed import DEFAULT_MODEL, DEFAULT_URL, EmbedClient
from nestrank.errors import NestrankError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestrank embed", description="Embed texts through a running nestrank server.")
    p.add_argument("texts", nargs="*", help="texts to embed (default: one per line on stdin)")
    p.add_argument("--url", action="append", help=f"gRPC endpoint, repeatable for failover (default {DEFAULT_URL})")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--dimensions", type=int)
    p.add_argument("--precision", default="float32")
    p.add_argument("--no-normalize", dest="normalize", action="store_false")
    p.add_argument("--input-type", help="query or passage (applies the model's prompt)")
    p.add_argument("--no-truncate", dest="truncate", action="store_false", help="refuse texts over the max length")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    try:
        with EmbedClient(args.url or DEFAULT_URL, args.model) as client:
            vectors = client.embed(
                texts,
                dimensions=args.dimensions,
                precision=args.precision,
                normalize=args.normalize,
                input_type=args.input_type,
                truncate=args.truncate,
            )
    except NestrankError as err:
        print(f"nestrank embed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    for text, vector in zip(texts, vectors):
        print(json.dumps({"text": text, "embedding": vector.tolist()}))
    return 0
