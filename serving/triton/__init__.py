"""The Triton glue: the `TritonPythonModel` classes (one module per kind of model), the BLS calls and the metrics.
Only these modules import `triton_python_backend_utils`; the work itself is `nestrank.serving.pipeline`'s.

An exported model's `model.py` is a stub that imports its class from here, so a repository always runs the installed
nestrank's glue (and an upgrade reaches it). Stubs exported before this layout import `nestrank.serving.models.<kind>`,
which re-exports the same classes."""

KINDS = ("embed", "rerank", "rerank_encode", "rerank_score")

GLUE_STUB = '''"""Triton Python model: the installed nestrank's {module}; exported by nestrank {version}."""

import os
import site

# The backend stub runs its own interpreter: `nestrank serve` names the environment to import from.
for _site_dir in filter(None, os.environ.get("NESTRANK_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

from {module} import TritonPythonModel  # noqa: E402,F401
'''


def glue_stub(kind: str, version: str) -> str:
    """The `model.py` of an exported model of this kind (embed, rerank, rerank_encode, rerank_score)."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; one of {KINDS}")
    return GLUE_STUB.format(module=f"nestrank.serving.triton.{kind}", version=version)
