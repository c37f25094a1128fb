"""`nestrank embed "text" ... --dimensions 128` (one JSON line per text) and
`nestrank rerank --query "..." doc ...` (one JSON line per ranked document)."""

from __future__ import annotations

import argparse
import json
import sys

from nestrank.clients.embed import DEFAULT_MODEL, DEFAULT_URL, EmbedClient
from nestrank.clients.rerank import RerankClient
from nestrank.protocol.errors import NestrankError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestrank embed", description="Embed texts through a running nestrank server.")
    p.add_argument("texts", nargs="*", help="texts to embed (default: one per line on stdin)")
    p.add_argument("--url", action="append", help=f"gRPC endpoint, repeatable for failover (default {DEFAULT_URL})")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--dimensions", type=int)
    p.add_argument("--precision", default="float32")
    p.add_argument("--no-normalize", dest="normalize", action="store_false")
    p.add_argument("--input-type", help="query or passage (applies the model's prompt)")
    p.add_argument("--layers", type=int, help="depth on the model's ladder (default: the full depth)")
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
                layers=args.layers,
            )
    except NestrankError as err:
        print(f"nestrank embed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the call and its requests were cancelled on the way out
        return 130
    for text, vector in zip(texts, vectors):
        print(json.dumps({"text": text, "embedding": vector.tolist()}))
    return 0


def rerank_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestrank rerank", description="Rerank documents for a query.")
    p.add_argument("documents", nargs="*", help="candidate documents (default: one per line on stdin)")
    p.add_argument("--query", required=True)
    p.add_argument("--url", action="append", help=f"gRPC endpoint, repeatable for failover (default {DEFAULT_URL})")
    p.add_argument("--model", default="kalm-reranker")
    p.add_argument("--instruction", help="task instruction (default: the model's)")
    p.add_argument("--top-n", type=int)
    p.add_argument("--compression-ratio", type=int, help="MEP ratio (default: the model's)")
    return p


def rerank_main(argv: list[str]) -> int:
    args = rerank_parser().parse_args(argv)
    documents = args.documents or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    try:
        with RerankClient(args.url or DEFAULT_URL, args.model) as client:
            ranked = client.rerank(args.query, documents, instruction=args.instruction, top_n=args.top_n,
                                   compression_ratio=args.compression_ratio, return_documents=True)  # fmt: skip
    except NestrankError as err:
        print(f"nestrank rerank: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    for r in ranked:
        print(json.dumps({"index": r.index, "score": round(r.score, 6), "document": r.document}))
    return 0
