"""The documentation builds: `mkdocs build --strict` over docs/ (a broken link or anchor, or a page left out of the
nav, fails it), and the README stays a short entry point whose links into docs/ all land."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_build_strict(tmp_path):
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                            "-d", str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "http-api" / "index.html").is_file()


def test_the_readme_is_short_and_its_links_land():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    targets = re.findall(r"\]\(((?:docs/)[^)#]+)", readme)
    assert targets and all((ROOT / target).is_file() for target in targets), targets
