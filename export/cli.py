"""`nestrank export embedder|reranker ...`: a progress bar and the parity figures; `-v` adds the libraries' output."""

from __future__ import annotations

import argparse
import functools
import os

DEFAULT_REPOSITORY = "model_repository"


def _dims(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dims takes comma-separated integers, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestrank export", description="Compile a checkpoint for Triton.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' warnings and logs (torch.onnx, transformers, ONNX "
                        "Runtime)")  # fmt: skip
    kinds = p.add_subparsers(dest="kind", required=True)
    e = kinds.add_parser("embedder", parents=[common],
                         help="a (Matryoshka) embedder: encoder + pooling + normalize in one ONNX graph")  # fmt: skip
    e.add_argument("--checkpoint", required=True, help="Hugging Face / sentence-transformers checkpoint directory")
    e.add_argument("--name", required=True, help="Triton model name (the folder under the repository)")
    e.add_argument("--repository", default=DEFAULT_REPOSITORY)
    e.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="weights of the graph")
    e.add_argument("--max-length", type=int, help="tokens, special tokens included (default: the checkpoint's)")
    e.add_argument("--dims", type=_dims, help="served Matryoshka dimensions, e.g. 384,256,128,64,32")
    e.add_argument("--pooling", choices=("mean", "cls", "lasttoken"), help="override the checkpoint's pooling")
    e.add_argument("--max-batch-size", type=int, default=256, help="texts per Triton request and dynamic batch")
    e.add_argument("--instances", type=int, default=1, help="model instances (each runs its own ORT session)")
    e.add_argument("--threads", type=int, default=0, help="ORT intra-op threads per instance (0: all cores)")
    e.add_argument("--tensorrt-fp16", action="store_true", help="GPU with TensorRT: build fp16 engines")
    e.add_argument("--layers", help="depth ladder served per request (`layers` parameter), e.g. 2,3,4,6, or all "
                   "(default: the full depth only); the full depth is always on it")  # fmt: skip
    e.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="keep the plain exporter graph (default: ONNX Runtime's transformer optimizer fuses "
                   "attention, skip-layer-norm and GELU for BERT-family checkpoints)")  # fmt: skip
    r = kinds.add_parser("reranker", parents=[common],
                         help="an FBNL reranker (T5Gemma 2 / T5): passage encoder + scorer graphs")  # fmt: skip
    r.add_argument("--checkpoint", required=True,
                   help="checkpoint directory, or Hugging Face model id (e.g. KaLM-Embedding/KaLM-Reranker-V1-Nano): "
                   "taken from the local cache, downloaded when there is a network")  # fmt: skip
    r.add_argument("--name", required=True, help="Triton model name; also writes NAME_encode and NAME_score")
    r.add_argument("--repository", default=DEFAULT_REPOSITORY)
    r.add_argument("--ratios", type=_dims, help="MEP compression ratios to serve (default 1,2,4,8,16,32)")
    r.add_argument("--max-query-tokens", type=int, default=512)
    r.add_argument("--max-passage-tokens", type=int, default=1024)
    r.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.kind == "embedder":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # embedder checkpoints are directories, never hub ids
    from nestrank.export import ParityError
    from nestrank.export.console import StageBar, library_output

    if args.kind == "reranker":
        from nestrank.export.reranker import RERANKER_STAGES as stages
        from nestrank.export.reranker import export_reranker

        export = functools.partial(
            export_reranker,
            args.checkpoint,
            args.name,
            args.repository,
            ratios=args.ratios,
            max_query_tokens=args.max_query_tokens,
            max_passage_tokens=args.max_passage_tokens,
            precision=args.precision,
        )
    else:
        from nestrank.export.embedder import EMBEDDER_STAGES as stages
        from nestrank.export.embedder import export_embedder

        export = functools.partial(
            export_embedder,
            args.checkpoint,
            args.name,
            args.repository,
            precision=args.precision,
            max_length=args.max_length,
            dimensions=args.dims,
            pooling=args.pooling,
            max_batch_size=args.max_batch_size,
            instance_count=args.instances,
            intra_op_threads=args.threads,
            tensorrt_fp16=args.tensorrt_fp16,
            layers=args.layers,
            fuse=args.fuse,
        )
    bar = StageBar(args.name, stages)
    try:
        with library_output(args.verbose):
            result = export(log=bar.write, progress=bar.stage)
    except (ParityError, FileNotFoundError, ValueError) as err:
        bar.close(done=False)
        print(f"nestrank export: {err}")
        return 1
    bar.close()
    written = result.model_dirs if args.kind == "reranker" else (result.model_dir,)
    print("wrote " + ", ".join(str(d) for d in written))
    return 0
