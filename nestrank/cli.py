"""`nestrank` command line: each subcommand is a `main(argv)` in its package, imported only when used
(a client-only install runs `nestrank embed` without torch)."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "export": ("nestrank.export.cli", "compile a checkpoint into a Triton model directory"),
    "serve": ("nestrank.serve", "start Triton on a model repository (exports the default model if missing)"),
    "index": ("nestrank.clients.indexing", "encode a corpus once into a served reranker's passage store"),
    "embed": ("nestrank.clients.cli:main", "embed texts through a running server"),
    "rerank": ("nestrank.clients.cli:rerank_main", "rerank documents for a query through a running server"),
    "bench": ("nestrank.bench.cli", "measure throughput and latency"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<8} {help_}" for name, (_, help_) in SUBCOMMANDS.items())
    return f"usage: nestrank <command> [options]\n\ncommands:\n{rows}\n\n`nestrank <command> --help` for details."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"nestrank: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, _, function = SUBCOMMANDS[argv[0]][0].partition(":")
    return getattr(importlib.import_module(module_name), function or "main")(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
