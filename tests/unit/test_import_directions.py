"""The import directions: each package imported with the others it must not touch blocked. A client-only install
imports nothing from serving (nor torch, onnxruntime, tokenizers); the contract imports none of the packages."""

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "onnxruntime", "tokenizers", "transformers")
PACKAGE = Path(__file__).resolve().parents[2] / "serving"
PIPELINE = sorted(p.stem for p in (PACKAGE / "pipeline").glob("*.py") if p.stem != "__init__")
LAUNCHER = sorted(p.stem for p in (PACKAGE / "launcher").glob("*.py"))
RULES = {  # package: (modules to import, prefixes it must not import)
    "protocol": (["nestrank.protocol.errors", "nestrank.protocol.embedding", "nestrank.protocol.reranking",
                  "nestrank.protocol.passages", "nestrank.protocol.parameters", "nestrank.protocol.headers",
                  "nestrank.protocol.graphs"],
                 ["nestrank.serving", "nestrank.clients", "nestrank.export", "nestrank.bench", *HEAVY]),
    "clients": (["nestrank.clients.embed", "nestrank.clients.rerank", "nestrank.clients.cli", "nestrank.cli"],
                ["nestrank.serving", "nestrank.export", "nestrank.bench", *HEAVY]),
    # serving/ is three groups: the pipeline stages (no Triton), the Triton glue over them, and the launcher, which
    # runs a server and never imports what runs inside it.
    "serving.pipeline": ([f"nestrank.serving.pipeline.{m}" for m in PIPELINE],
                         ["nestrank.serving.triton", "nestrank.serving.launcher", "nestrank.serving.models",
                          "triton_python_backend_utils", "nestrank.clients", "nestrank.export", "nestrank.bench",
                          "nestrank.api", "torch", "transformers"]),
    "serving.triton": ([f"nestrank.serving.triton.{m}" for m in ("glue", "metrics")],
                       ["nestrank.serving.launcher", "nestrank.clients", "nestrank.export", "nestrank.bench",
                        "nestrank.api", "torch", "transformers"]),
    "serving.launcher": ([f"nestrank.serving.launcher.{m}" for m in LAUNCHER],
                         ["nestrank.serving.pipeline", "nestrank.serving.triton", "nestrank.serving.models",
                          "nestrank.clients", "nestrank.export", "nestrank.bench", "nestrank.api", *HEAVY]),
    # The HTTP front: over the clients; it reads tokenizers for usage counts (serving.tokenization), nothing heavier.
    "api": (["nestrank.api.app", "nestrank.api.cli", "nestrank.api.catalogue"],
            ["nestrank.export", "nestrank.bench", "torch", "transformers", "onnxruntime"]),
    "export": (["nestrank.export.embedder", "nestrank.export.reranker", "nestrank.export.cli",
                "nestrank.export.repository"],
               ["nestrank.clients", "nestrank.bench"]),
}  # fmt: skip

BLOCKER = """
import importlib.abc, sys
blocked = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            raise ImportError(f"{{name}} is off limits here")
sys.meta_path.insert(0, Block())
for module in {modules!r}:
    __import__(module)
"""


@pytest.mark.parametrize("package", list(RULES))
def test_imports_follow_the_seams(package):
    modules, blocked = RULES[package]
    code = BLOCKER.format(blocked=blocked, modules=modules)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_triton_glue_is_thin():
    """The `TritonPythonModel` modules read requests and answer them; the work is the pipeline's."""
    for path in (PACKAGE / "triton").glob("*.py"):
        if path.stem in ("embed", "rerank", "rerank_encode", "rerank_score"):
            assert len(path.read_text().splitlines()) <= 120, f"{path.name} has grown past glue"
