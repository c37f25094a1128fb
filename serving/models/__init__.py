"""The TritonPythonModel glue, one module per kind of model. An exported model's `model.py` is a stub that imports
its class from here, so a repository always runs the installed nestrank's glue (and an upgrade reaches it)."""

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
    return GLUE_STUB.format(module=f"nestrank.serving.models.{kind}", version=version)
