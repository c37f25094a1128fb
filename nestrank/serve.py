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
    p.add_argument("--passage-store", default=os.environ.get("NESTRANK_PASSAGE_STORE") or default_passage_store(),
                   help="where rerankers keep pooled passage states: lmdb:///path[?map_size=16GiB] (one host, "
                   "persistent), redis://host:port/db (shared by replicas), or memory:// (this process only); "
                   "default %(default)s; env NESTRANK_PASSAGE_STORE")  # fmt: skip
    p.add_argument(
        "--no-default-models",
        action="store_true",
        help="serve the repository as it is (default: export all-MiniLM-L6-v2 fp32 + int8 into it if missing)",
    )
    return p


def default_passage_store() -> str:
    """LMDB in the user's cache directory: persistent, shared by every server on this host (keys carry each model's
    passage fingerprint, so models never mix)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return f"lmdb://{(cache / 'nestrank' / 'passages').resolve()}"


def check_passage_store(url: str) -> None:
    """Refuse a malformed store URL at start-up; an unreachable store only warns (documents still rerank)."""
    from nestrank.serving.passage_store import StoreError, open_store

    try:
        store = open_store(url)
    except ValueError as err:
        raise SystemExit(f"nestrank serve: --passage-store: {err}")
    try:
        store.get_many([b"nestrank:ping"])
    except StoreError as err:
        print(f"nestrank serve: WARNING: {err}; reranking by id fails until it answers", file=sys.stderr)
    finally:
        store.close()


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
        check_passage_store(args.passage_store)
        prepare(Path(args.repository), args.reranker, args.reranker_name, not args.no_default_models)
    # tritonserver and its model stubs get the store in their environment
    return serving_cli.run(args, {"NESTRANK_PASSAGE_STORE": args.passage_store, **(environment or {})})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
