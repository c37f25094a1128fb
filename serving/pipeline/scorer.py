"""The reranker's query side: decoder prompts against pooled passages (the scorer graph) → margins
logit(yes) - logit(no); their scores (the one sigmoid); and ranking by margin."""

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
from nestrank.serving.pipeline.batching import padded_buckets
from nestrank.serving.pipeline.stages import result_of

SCORER_FILE = "scorer.onnx"
PROMPT_PAD_ID = 0  # what pads a shorter prompt in a run: the decoder is causal, so no real position ever sees it


@dataclass
class ScoreJob:
    """One `_score` request (Scorer.pre): a prompt and its candidates; `result` their margins, or its error."""

    prompt: np.ndarray
    passages: PassageStates
    result: object = field(default=None)

    @property
    def tokens(self) -> int:
        """The scheduler's unit for `_score`, as `score_batch_tokens`: the decoder reads the whole prompt once per
        candidate, and cross-attends to each candidate's pooled groups."""
        return len(self.prompt) * len(self.passages) + int(self.passages.lengths.sum())


class Scorer:
    """Prompts against pooled passages: the candidates of every job of an execution run together, sorted by prompt
    length and groups and padded per run (padded_buckets), each answer read at its own prompt's last position."""

    def __init__(self, config: RerankerConfig, session):
        names = {i.name for i in session.get_inputs()}
        if g.PROMPT_LENGTHS not in names:
            raise ValueError("this scorer graph reads one prompt per run (exported by a nestrank from before "
                             "requests shared scorer runs); re-export the reranker with `nestrank export`")  # fmt: skip
        self.config = config
        self.session = session

    @staticmethod
    def profile(config: RerankerConfig):
        """The TensorRT profile covering every run `core` cuts: up to max_score_run_candidates rows of up to the
        longest pooled passage (ratio min(ratios)), with the longest prompt `check_score_inputs` accepts."""
        from nestrank.serving.pipeline.runtime import ShapeProfile

        groups = -(-config.max_passage_tokens // min(config.ratios))
        prompt, hidden = config.max_query_tokens + MAX_PROMPT_EXTRA_TOKENS, config.hidden_size
        most = config.max_score_run_candidates
        typical = min(groups, -(-256 // config.default_ratio))  # a 256-token passage at the default ratio
        batch = max(1, min(most, config.score_batch_tokens // (typical + min(128, prompt))))
        return ShapeProfile((
            (g.DECODER_INPUT_IDS, (1, 1), (batch, min(128, prompt)), (most, prompt)),
            (g.PROMPT_LENGTHS, (1,), (batch,), (most,)),
            (g.PASSAGE_STATES, (1, 1, hidden), (batch, typical, hidden), (most, groups, hidden)),
            (g.PASSAGE_MASK, (1, 1), (batch, typical), (most, groups)),
        ))  # fmt: skip

    @staticmethod
    def open_session(path: str | Path, config: RerankerConfig, providers: tuple[str, ...] | None = None):
        from nestrank.serving.pipeline.runtime import create_session

        return create_session(path, intra_op_threads=config.intra_op_threads, providers=providers,
                              profile=Scorer.profile(config))  # fmt: skip

    # -- the Stage (stages.py) -----------------------------------------------------------------------------------

    def pre(self, prompt: np.ndarray, passages: PassageStates) -> ScoreJob:
        """One request's job, its prompt and passages checked (check_score_inputs) before it can share a run."""
        check_score_inputs(self.config, prompt, passages)
        return ScoreJob(prompt, passages)

    def core(self, jobs: Sequence[ScoreJob]) -> None:
        """Every job's margins, its candidates run with the other jobs' (each row answered at its own prompt's
        last position, in its own job's order)."""
        rows = [(k, i) for k, job in enumerate(jobs) for i in range(len(job.passages))]
        prompt_lengths = np.repeat([len(job.prompt) for job in jobs], [len(job.passages) for job in jobs])
        groups = np.concatenate([job.passages.lengths for job in jobs]).astype(np.int64)
        margins = [np.empty(len(job.passages), dtype=np.float32) for job in jobs]
        budget = max(self.config.score_batch_tokens, int((prompt_lengths + groups).max(initial=1)))
        for run in padded_buckets(prompt_lengths, groups, self.config.max_score_run_candidates, budget):
            picked = [rows[r] for r in run]
            feeds = self._feeds([(jobs[k], i) for k, i in picked], int(prompt_lengths[run].max()),
                                int(groups[run].max()))  # fmt: skip
            (run_margins,) = self.session.run([g.MARGINS], feeds)
            for (k, i), margin in zip(picked, run_margins):
                margins[k][i] = margin
        for job, job_margins in zip(jobs, margins):
            job.result = job_margins

    def _feeds(self, rows: list[tuple[ScoreJob, int]], longest_prompt: int, most_groups: int) -> dict:
        """One run's inputs: prompts right-padded, passage states padded with zeros (their mask 0): the one padding
        of the passage states, right before ONNX Runtime (ragged everywhere before this)."""
        ids = np.full((len(rows), longest_prompt), PROMPT_PAD_ID, dtype=np.int64)
        lengths = np.empty(len(rows), dtype=np.int64)
        states = np.zeros((len(rows), most_groups, self.config.hidden_size), dtype=np.float32)
        mask = np.zeros((len(rows), most_groups), dtype=np.int64)
        for row, (job, i) in enumerate(rows):
            ids[row, : len(job.prompt)] = job.prompt
            lengths[row] = len(job.prompt)
            passage_states, counts = job.passages.passage(i)
            states[row, : len(counts)] = passage_states
            mask[row, : len(counts)] = counts > 0
        return {g.DECODER_INPUT_IDS: ids, g.PROMPT_LENGTHS: lengths, g.PASSAGE_STATES: states, g.PASSAGE_MASK: mask}

    post = staticmethod(result_of)

    def margins(self, prompt_ids: np.ndarray, passages: PassageStates) -> np.ndarray:
        """logit(yes) - logit(no) per passage, in input order (in-process: the parity gates, the benchmarks)."""
        job = ScoreJob(prompt_ids, passages)
        self.core([job])
        return self.post(job)

    def measure_tokens_per_s(self) -> float:
        """This model's speed on this machine, in the scheduler's unit (ScoreJob.tokens), for its first estimate:
        16 passages of 32 groups against a 64-token prompt, timed on a second run."""
        rng = np.random.default_rng(0)
        hidden = self.config.hidden_size
        pairs = [(rng.standard_normal((32, hidden)).astype(np.float32), np.ones(32, np.int32)) for _ in range(16)]
        job = ScoreJob(np.full(64, 5, dtype=np.int64), PassageStates.from_passages(pairs, ratio=0))
        self.core([job])
        started = time.perf_counter()
        self.core([job])
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


def sigmoid(margins: np.ndarray) -> np.ndarray:
    """The score of a margin, P(yes) = sigmoid(logit(yes) - logit(no)), as float32: the one place it is computed
    (the rerank service, the parity gates, the benchmarks). It saturates to 1.0 past a margin of about 17, so
    candidates are ranked by their margins (`rank`), never by it."""
    return (1.0 / (1.0 + np.exp(-np.asarray(margins, dtype=np.float64)))).astype(np.float32)


def rank(margins: np.ndarray, top_n: int | None) -> np.ndarray:
    """Indices by descending margin (input order for equal margins), cut to top_n."""
    order = np.argsort(-np.asarray(margins, dtype=np.float64), kind="stable")
    return order[:top_n] if top_n else order
