"""bench/RESULTS.md holds one section per benchmark; each benchmark rewrites its own section and leaves the others."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path("bench/RESULTS.md")
TITLE = (
    "# nestrank benchmark results\n\nEach section is rewritten by the command it names; the others stay as they were.\n"
)


def update_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else TITLE
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
