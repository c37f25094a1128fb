"""The one interface every model's work goes through, named after Infinity's `encode_pre / encode_core /
encode_post`: a Stage turns one request into a job (`pre`: read and check it, on the thread that takes requests
in), runs many jobs together (`core`: tokenize where that is left to do, then ONNX Runtime over all of them, on the
scheduler's worker), and turns one job into its answer (`post`).

- Embedder (embedder.py): `pre` texts and options → EmbedJob (its tokens estimated); `core` tokenize, run the
  encoder (with pooling) over length buckets; `post` Matryoshka slice and precision.
- PassageEncoder (passage_encoder.py): `pre` documents (tokenized) and a ratio → EncodeJob; `core` the encoder over
  length buckets, then MEP; `post` the job's PassageStates.
- Scorer (scorer.py): `pre` a prompt and passages (checked) → ScoreJob; `core` the decoder over every job's
  candidates at once; `post` the job's margins.

The scheduler (scheduler.py) runs any Stage; the Triton glue (serving/triton/) calls `pre` and hands jobs to it;
the in-process pipeline (reranker.py), the exporter's parity gates and the benchmarks call the same methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

J = TypeVar("J")


class Stage(Protocol[J]):
    def core(self, jobs: Sequence[J]) -> None:
        """Runs the jobs together; a job whose own input fails holds its error (its `result`), the others run on.
        Raises only when the shared run itself fails (the scheduler then runs the jobs one by one)."""

    def post(self, job: J) -> object:
        """The job's answer: its result, or raises its error."""


def result_of(job) -> object:
    """Every stage's `post` where the job's result is its answer: the result, or raises the error it holds."""
    if isinstance(job.result, Exception):
        raise job.result
    return job.result
