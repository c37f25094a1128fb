"""What the last release (nestrank 0.1.0, before the layout by concern) wrote into an exported model's `model.py`,
verbatim: its stubs import `nestrank.serving.models.<kind>`. The session repository serves some models with it."""

from __future__ import annotations

from pathlib import Path

LEGACY_STUB = '''"""Triton Python model: the installed nestrank's nestrank.serving.models.{kind}; exported by nestrank 0.1.0."""

import os
import site

# The backend stub runs its own interpreter: `nestrank serve` names the environment to import from.
for _site_dir in filter(None, os.environ.get("NESTRANK_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

from nestrank.serving.models.{kind} import TritonPythonModel  # noqa: E402,F401
'''


def as_exported_by_the_last_release(model_dir: Path) -> None:
    """Rewrites the model's stub as the last release exported it (same kind, read from today's stub)."""
    stub = model_dir / "1" / "model.py"
    kind = stub.read_text().split("from nestrank.serving.triton.", 1)[1].split(" ", 1)[0]
    stub.write_text(LEGACY_STUB.format(kind=kind))
