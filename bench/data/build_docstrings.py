"""Builds `docstrings.jsonl`, the retrieval set of `nestrank bench quality`, from the docstrings of the Python
standard library: each module, class and function docstring with a summary line and a body of its own gives one
pair, the summary line as the query and the body as the one relevant document. Sources are parsed (`ast`), never
imported, so building runs no library code.

Run: `.venv/bin/python bench/data/build_docstrings.py` (rewrites bench/data/docstrings.jsonl; the committed file
was built with the Python named in its first line's `python` field).
"""

from __future__ import annotations

import ast
import json
import platform
import re
import sys
import sysconfig
from pathlib import Path

OUT = Path(__file__).with_name("docstrings.jsonl")
SKIP = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages", "__pycache__",
        "pydoc_data", "this", "antigravity"}  # fmt: skip
MIN_BODY_CHARS = 120
MAX_BODY_CHARS = 1200
MAX_PAIRS = 600


def split(doc: str) -> tuple[str, str] | None:
    """(summary line, body) of a docstring laid out as PEP 257 says, else None."""
    lines = doc.strip().splitlines()
    if len(lines) < 3 or lines[1].strip():
        return None
    summary = lines[0].strip()
    body = re.sub(r"\s+", " ", " ".join(lines[2:])).strip()
    if len(summary.split()) < 4 or len(body) < MIN_BODY_CHARS or ">>>" in body[:200]:
        return None
    return summary, body[:MAX_BODY_CHARS].rsplit(" ", 1)[0] if len(body) > MAX_BODY_CHARS else body


def sources(stdlib: Path):
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if any(p in SKIP or p.startswith("_") and p != "__init__.py" for p in parts):
            continue
        yield ".".join(parts).removesuffix(".py").removesuffix(".__init__"), path


def pairs():
    seen_summaries, seen_bodies = set(), set()
    for module, path in sources(Path(sysconfig.get_paths()["stdlib"])):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [(module, tree)] + [
            (f"{module}.{n.name}", n)
            for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
        ]
        for name, node in nodes:
            doc = ast.get_docstring(node)
            parsed = split(doc) if doc else None
            if parsed is None or parsed[0] in seen_summaries or parsed[1] in seen_bodies:
                continue  # a query must have one relevant document
            seen_summaries.add(parsed[0])
            seen_bodies.add(parsed[1])
            yield {"id": name, "query": parsed[0], "document": parsed[1]}


def main() -> int:
    found = list(pairs())[:MAX_PAIRS]
    header = {"python": platform.python_version(), "pairs": len(found), "source": "stdlib docstrings (ast)"}
    with OUT.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for pair in found:
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({len(found)} pairs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
