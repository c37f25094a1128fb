"""The import directions: each package imported with the others it must not touch blocked. A client-only install
imports nothing from serving (nor torch, onnxruntime, tokenizers); the contract imports none of the packages."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "tokenizers", "transformers")
RULES = {  # package: (modules to import, prefixes it must not import)
    "protocol": (["nestrank.protocol.errors", "nestrank.protocol.embedding", "nestrank.protocol.reranking",
                  "nestrank.protocol.passages", "nestrank.protocol.parameters", "nestrank.protocol.headers"],
                 ["nestrank.serving", "nestrank.clients", "nestrank.export", "nestrank.bench", *HEAVY]),
    "clients": (["nestrank.clients.embed", "nestrank.clients.rerank", "nestrank.clients.cli", "nestrank.cli"],
                ["nestrank.serving", "nestrank.export", "nestrank.bench", *HEAVY]),
    "serving": (["nestrank.serving.embedder", "nestrank.serving.reranker", "nestrank.serving.rerank_service",
                 "nestrank.serving.passage_cache", "nestrank.serving.launcher", "nestrank.serving.cli",
                 "nestrank.serving.triton_glue"],
                ["nestrank.clients", "nestrank.export", "nestrank.bench", "torch", "transformers"]),
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
