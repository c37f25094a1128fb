"""The packages pyproject.toml lists are every package in the tree: an editable install finds a missing one on
disk, a wheel (the Dockerfile's `pip install .`, a client-only install) silently leaves it out."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[2]


def test_every_package_in_the_tree_is_listed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"nestrank": ROOT / "nestrank", **{k: ROOT / v for k, v in setuptools["package-dir"].items()}}
    found = set()
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((package, *parts)))
    assert found == set(setuptools["packages"])
