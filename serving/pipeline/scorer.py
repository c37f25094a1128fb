"""The reranker's query side: one decoder prompt against many pooled passages (the scorer graph) → margins
logit(yes) - logit(no); and ranking."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nestrank.protocol import graphs as g
from nestrank.protocol.errors import ValidationError
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import RerankerConfig
from nestrank.serving.pipeline.batching import length_buckets

SCORER_FILE = "scorer.onnx"


SCORE_BATCH = 256  # candidates per scorer run


@dataclass
class ScoreJob:
    """One `_score` request in the scheduler: a prompt and its candidates; `result` their margins (or an error)."""

    prompt: np.ndarray
    passages: PassageStates
    result: object = field(default=None)

    @property
    def tokens(self) -> int:
        """The scheduler's unit for `_score`, as `score_batch_tokens`: candidates × pooled length (their groups)."""
        return int(self.passages.lengths.sum())


class Scorer:
    """One prompt against many pooled passages: candidates bucketed by pooled length, no padding to the longest."""

    def __init__(self, config: RerankerConfig, session):
        self.config = config
        self.session = session

    @staticmethod
    def profile(config: RerankerConfig):
        """The TensorRT profile covering every batch `margins` cuts: up to SCORE_BATCH candidates of up to the
        longest pooled passage (ratio min(ratios)), with the longest prompt `check_score_inputs` accepts."""
        from nestrank.serving.pipeline.runtime import ShapeProfile

        groups = -(-config.max_passage_tokens // min(config.ratios))
        prompt, hidden = config.max_query_tokens + MAX_PROMPT_EXTRA_TOKENS, config.hidden_size
        typical = min(groups, -(-256 // config.default_ratio))  # a 256-token passage at the default ratio
        batch = max(1, min(SCORE_BATCH, config.score_batch_tokens // typical))
        return ShapeProfile((
            (g.DECODER_INPUT_IDS, (1, 1), (batch, min(128, prompt)), (SCORE_BATCH, prompt)),
            (g.PASSAGE_STATES, (1, 1, hidden), (batch, typical, hidden), (SCORE_BATCH, groups, hidden)),
            (g.PASSAGE_MASK, (1, 1), (batch, typical), (SCORE_BATCH, groups)),
        ))  # fmt: skip

    @staticmethod
    def open_session(path: str | Path, config: RerankerConfig, providers: tuple[str, ...] | None = None):
        from nestrank.serving.pipeline.runtime import create_session

        return create_session(path, intra_op_threads=config.intra_op_threads, providers=providers,
                              profile=Scorer.profile(config))  # fmt: skip

    def margins(self, prompt_ids: np.ndarray, passages: PassageStates) -> np.ndarray:
        """logit(yes) - logit(no) per passage, in input order."""
        margins = np.empty(len(passages), dtype=np.float32)
        lengths = passages.lengths
        budget = max(self.config.score_batch_tokens, int(lengths.max(initial=1)))
        for idx in length_buckets(lengths, SCORE_BATCH, budget, min_fill=0.8):
            # the one padding of the passage states, right before ONNX Runtime: ragged everywhere before this
            padded, counts = passages.padded(idx, dtype=np.float32)
            states, mask = padded, (counts > 0).astype(np.int64)
            decoder_ids = np.broadcast_to(prompt_ids, (len(idx), len(prompt_ids))).copy()
            (batch_margins,) = self.session.run(
                [g.MARGINS], {g.DECODER_INPUT_IDS: decoder_ids, g.PASSAGE_STATES: states, g.PASSAGE_MASK: mask}
            )
            margins[idx] = batch_margins
        return margins

    def run(self, jobs: Sequence[ScoreJob]) -> Sequence[ScoreJob]:
        """One scheduler execution: each job's margins against its own prompt (an error fails its job only)."""
        for job in jobs:
            try:
                job.result = self.margins(job.prompt, job.passages)
            except Exception as err:  # noqa: BLE001 - checked inputs; a failure here is that request's
                job.result = err
        return jobs

    def measure_tokens_per_s(self) -> float:
        """This model's speed on this machine, in the scheduler's unit (candidates × pooled length), for its first
        estimate: 16 passages of 32 groups against a 64-token prompt, timed on a second run."""
        rng = np.random.default_rng(0)
        hidden = self.config.hidden_size
        pairs = [(rng.standard_normal((32, hidden)).astype(np.float32), np.ones(32, np.int32)) for _ in range(16)]
        job = ScoreJob(np.full(64, 5, dtype=np.int64), PassageStates.from_passages(pairs, ratio=0))
        self.run([job])
        started = time.perf_counter()
        self.run([job])
        return job.tokens / max(time.perf_counter() - started, 1e-6)


MAX_PROMPT_EXTRA_TOKENS = 4096  # room for the template and a long instruction beyond max_query_tokens


def valid_groups(passages: PassageStates) -> np.ndarray:
    """Groups holding tokens, per passage."""
    valid = np.concatenate([[0], np.cumsum(passages.counts > 0)])
    return valid[passages.offsets[1:]] - valid[passages.offsets[:-1]]


def check_score_inputs(config: RerankerConfig, prompt: np.ndarray, passages: PassageStates) -> None:
    """What `<name>_score` accepts (it is reachable from outside, like every model): a prompt of known token ids,
    1..max_candidates passages of at most max_passage_tokens groups of the model's width within
    max_request_state_bytes, counts within the model's limits, each passage with a valid group."""
    longest = config.max_query_tokens + MAX_PROMPT_EXTRA_TOKENS
    if prompt.ndim != 1 or not 0 < len(prompt) <= longest:
        raise ValidationError("decoder_input_ids", f"shape {list(prompt.shape)}; expected [L] with 1 <= L <= {longest}")
    if config.vocab_size and ((prompt < 0) | (prompt >= config.vocab_size)).any():
        raise ValidationError("decoder_input_ids", f"token ids must be in 0..{config.vocab_size - 1}")
    h, most = config.hidden_size, config.max_passage_tokens
    if passages.width != h or not 0 < len(passages) <= config.max_candidates:
        raise ValidationError("passage_states", f"{len(passages)} passages of width {passages.width}; expected "
                              f"1..{config.max_candidates} of width {h}")  # fmt: skip
    if passages.lengths.max() > most or not np.isfinite(passages.states).all():
        raise ValidationError("passage_states", f"at most {most} groups, all values finite")
    if passages.states.nbytes > config.max_request_state_bytes:
        raise ValidationError("passage_states", f"{passages.states.nbytes / 2**20:.1f} MiB exceed "
                              f"max_request_state_bytes {config.max_request_state_bytes / 2**20:.0f} MiB")  # fmt: skip
    if (passages.counts < 0).any() or (passages.counts > most).any():
        raise ValidationError("passage_counts", f"values 0..{most}")
    empty = np.flatnonzero(valid_groups(passages) == 0)
    if empty.size:
        raise ValidationError(f"passage_counts[{int(empty[0])}]", "no valid group; a passage needs tokens")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The score from a margin: computed once, by the rerank service (and the parity gates)."""
    return 1.0 / (1.0 + np.exp(-x))


def rank(scores: np.ndarray, top_n: int | None) -> np.ndarray:
    """Indices by descending score (stable for ties), cut to top_n."""
    order = np.argsort(-scores, kind="stable")
    return order[:top_n] if top_n else order
