"""`nestrank serve`, the main job: prepares the repository (exports the default models, and a reranker if asked,
when missing), then serves it. The one place that joins `export` and `serving`."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from nestrank.serving import cli as serving_cli


def parser():
    p = serving_cli.parser()
    p.add_argument("--reranker", default=os.environ.get("NESTRANK_RERANKER"),
                   help="also serve this FBNL reranker (checkpoint directory or Hugging Face model id, e.g. "
                   "KaLM-Embedding/KaLM-Reranker-V1-Nano), exported into the repository first if missing")  # fmt: skip
    p.add_argument("--reranker-name", help="its Triton model name (default: from the checkpoint's name)")
    p.add_argument(
        "--no-default-models",
        action="store_true",
        help="serve the repository as it is (default: export all-MiniLM-L6-v2 fp32 + int8 into it if missing)",
    )
    return p


def prepare(repository: Path, reranker: str | None, reranker_name: str | None, default_models: bool) -> None:
    try:
        from nestrank.export import repository as exported
    except ImportError as err:
        raise SystemExit(f"nestrank serve: cannot export models ({err}); install nestrank[export]")
    if reranker:  # first: a model id may need the network, which the default models' export turns off
        try:
            exported.ensure_reranker(repository, reranker, reranker_name or exported.reranker_name(reranker))
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            raise SystemExit(f"nestrank serve: cannot export {reranker}: {err}")
    if default_models:
        exported.ensure_default_models(repository)
    if repository.is_dir():
        exported.warn_about_other_versions(repository)


def main(argv: list[str], environment: Mapping[str, str] | None = None) -> int:
    """`environment`: extra variables for tritonserver and its models, from Python (no flag), e.g.
    `main(["--repository", "repo"], environment={"NESTRANK_PASSAGE_STORE": "lmdb:///var/lib/nestrank"})`."""
    args = parser().parse_args(argv)
    if not serving_cli.refused(args):  # else run() says why, before any export
        prepare(Path(args.repository), args.reranker, args.reranker_name, not args.no_default_models)
    return serving_cli.run(args, environment)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
