"""The embed pipeline: texts → tokens → ONNX (encoder + pooling + normalize) → Matryoshka → precision.

A model exported with a depth ladder (`--layers 2,3,6`) is a chain of segment graphs (embeddings + layers 0..2,
layers 2..3, layers 3..6), each ending in pooling + normalize for its depth. A run takes every text of the
execution, whatever its depth, through the first segment in length buckets; the texts that asked for that depth
leave there, the rest go on together to the next segment: mixed-depth traffic keeps its batching, and a text of
depth k runs only the first k layers.

Used by the Triton model (serving/triton/embed.py), by the exporter's parity gate and by the
in-process baseline of the benchmark, so all three run the same code.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nestrank.protocol import graphs as g
from nestrank.protocol.embedding import EmbedderConfig, EmbedOptions, parse_options, validate_texts
from nestrank.protocol.errors import BackendError
from nestrank.serving.pipeline.batching import length_buckets
from nestrank.serving.pipeline.matryoshka import truncate_dimensions
from nestrank.serving.pipeline.quantization import quantize
from nestrank.serving.pipeline.stages import result_of
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, TextTokenizer, pad

MODEL_FILE = "model.onnx"
CALIBRATION_FILE = "calibration.npz"


def segment_file(depth: int) -> str:
    """The graph of a ladder's segment that ends at `depth` (it starts where the one before it ended)."""
    return f"layers_{depth}.onnx"


def calibration_key(dimensions: int, layers: int | None) -> str:
    """Calibration ranges per (dims, depth); the full depth keeps the key exports before the ladder wrote."""
    return str(dimensions) if layers is None else f"{dimensions}@{layers}"


@dataclass(frozen=True)
class Segment:
    depth: int  # the layers run once this segment has run (0: not recorded, an export before the ladder)
    session: Any
    first: bool  # reads token ids (else the states of the segment before)
    last: bool


@dataclass
class EmbedJob:
    """One request's texts and options (Embedder.pre); `sequences` and `result` are filled by Embedder.core."""

    texts: Sequence[str]
    options: EmbedOptions
    tokens_estimate: int = 0  # what the scheduler counts (from the texts' length)
    sequences: list[np.ndarray] | None = field(default=None)
    result: np.ndarray | Exception | None = field(default=None)

    @property
    def tokens(self) -> int:
        """The scheduler's unit: the estimate until the job is tokenized, its tokens after."""
        return sum(len(s) for s in self.sequences) if self.sequences is not None else self.tokens_estimate


class Embedder:
    def __init__(self, config: EmbedderConfig, tokenizer: TextTokenizer, sessions, ranges: Mapping[str, np.ndarray]):
        """`sessions`: one ONNX Runtime session (one graph, the full depth), or one per ladder depth, in order."""
        self.config = config
        self.tokenizer = tokenizer
        sessions = list(sessions) if isinstance(sessions, (list, tuple)) else [sessions]
        depths = config.layers if len(sessions) > 1 else (config.num_layers,)
        if len(depths) != len(sessions):
            raise ValueError(f"{len(sessions)} segment sessions for the ladder {depths}")
        self.segments = tuple(Segment(d, s, i == 0, i == len(sessions) - 1)
                              for i, (d, s) in enumerate(zip(depths, sessions)))  # fmt: skip
        self.ranges = {str(k): v for k, v in ranges.items()}

    @property
    def session(self):
        """The first graph's session (the only one without a ladder)."""
        return self.segments[0].session

    @classmethod
    def load(cls, model_dir: str | Path, config: EmbedderConfig, providers: tuple[str, ...] | None = None) -> Embedder:
        from nestrank.serving.pipeline.runtime import (  # onnxruntime only where a model runs
            ShapeProfile,
            create_session,
        )

        model_dir = Path(model_dir)
        tokenizer = TextTokenizer(model_dir / TOKENIZER_FILE, config.max_length)
        profile = ShapeProfile.token_batches(g.TOKEN_INPUTS, config.max_run_sequences,
                                             config.max_length, config.max_run_tokens)  # fmt: skip
        ladder = len(config.layers) > 1
        files = [segment_file(d) for d in config.layers] if ladder else [MODEL_FILE]
        sessions = []
        for i, name in enumerate(files):
            if i:  # later segments read the states before them: [batch, length, width]
                (mask,) = ShapeProfile.token_batches((g.ATTENTION_MASK,), config.max_run_sequences,
                                                     config.max_length, config.max_run_tokens).shapes  # fmt: skip
                states = (g.HIDDEN_STATES, (*mask[1], config.width), (*mask[2], config.width), (*mask[3], config.width))
                profile = ShapeProfile((states, mask))
            sessions.append(create_session(model_dir / name, intra_op_threads=config.intra_op_threads,
                                           providers=providers, profile=profile,
                                           tensorrt_fp16=config.tensorrt_fp16))  # fmt: skip
        ranges: dict[str, np.ndarray] = {}
        if (model_dir / CALIBRATION_FILE).exists():
            with np.load(model_dir / CALIBRATION_FILE) as stored:
                ranges = {k: stored[k] for k in stored.files}
        return cls(config, tokenizer, sessions, ranges)

    def segment_index(self, layers: int | None) -> int:
        """Which segment a depth leaves at (None: the full depth, the last)."""
        if layers is None:
            return len(self.segments) - 1
        for i, segment in enumerate(self.segments):
            if segment.depth == layers:
                return i
        raise ValueError(f"depth {layers} is not on this model's ladder {[s.depth for s in self.segments]}")

    def encode(self, sequences: Sequence[np.ndarray],
               layers: Sequence[int | None] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Token ids → (normalised embeddings, pooled embeddings), both [N, width] float32, in order; `layers`: each
        sequence's depth (None: the full depth)."""
        normalized = np.empty((len(sequences), self.config.width), dtype=np.float32)
        pooled = np.empty_like(normalized)
        full = len(self.segments) - 1
        goal = np.array([full if d is None else self.segment_index(d) for d in layers] if layers is not None
                        else [full] * len(sequences), dtype=np.int64)  # fmt: skip
        buckets = length_buckets([len(s) for s in sequences], self.config.max_run_sequences, self.config.max_run_tokens)
        for idx in buckets:
            idx = np.asarray(idx)
            input_ids, attention_mask = pad([sequences[i] for i in idx], self.tokenizer.pad_id)
            feed = {g.INPUT_IDS: input_ids, g.ATTENTION_MASK: attention_mask}
            rows = np.arange(len(idx))  # the bucket's rows still running
            deepest = int(goal[idx].max())
            for j, segment in enumerate(self.segments[: deepest + 1]):
                names = [g.EMBEDDINGS, g.POOLED_EMBEDDINGS] + ([] if j == deepest else [g.NEXT_HIDDEN_STATES])
                out = segment.session.run(names, feed)
                leaving = goal[idx[rows]] == j
                normalized[idx[rows[leaving]]] = out[0][leaving]
                pooled[idx[rows[leaving]]] = out[1][leaving]
                if j == deepest:
                    break
                staying = ~leaving
                rows = rows[staying]
                mask = attention_mask[rows]
                length = int(mask.sum(axis=1).max())  # right-padded: the staying rows may need fewer columns
                feed = {g.HIDDEN_STATES: np.ascontiguousarray(out[2][staying][:, :length]),
                        g.ATTENTION_MASK: np.ascontiguousarray(mask[:, :length])}  # fmt: skip
        return normalized, pooled

    # -- the Stage (stages.py) -----------------------------------------------------------------------------------

    def pre(self, texts: Sequence[str], options: EmbedOptions) -> EmbedJob:
        """One request's job, its texts checked (an empty request or text is refused here, before it can share an
        execution) and its tokens estimated from their length: tokenizing is left to `core`, off the thread that
        takes requests in."""
        validate_texts(texts)
        return EmbedJob(list(texts), options, tokens_estimate=self.estimate_tokens(texts))

    def tokenize(self, job: EmbedJob) -> EmbedJob:
        """The job's token ids (its prompt included); typed errors for what the request got wrong."""
        prompt = self.config.prompt_for(job.options.input_type)
        texts = [prompt + t for t in job.texts] if prompt else job.texts
        job.sequences = self.tokenizer.encode(texts, truncate=job.options.truncate,
                                              direction=job.options.truncation_direction)  # fmt: skip
        return job

    def estimate_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the texts will take, from their length alone (about 3 characters a token, capped at max_length):
        what admission needs, without tokenizing on the thread that takes requests in (the worker tokenizes)."""
        return sum(min(self.config.max_length, len(t) // 3 + 2) for t in texts)

    def core(self, jobs: Sequence[EmbedJob]) -> None:
        """Embeds every job's texts in one sorted pass (tokenizing those not tokenized yet); each job gets its
        result or its own error."""
        ready = []
        for job in jobs:
            if job.sequences is None:
                try:
                    self.tokenize(job)
                except Exception as err:  # bad input (typed), or a bug: this job's alone
                    job.result = err
                    continue
            ready.append(job)
        sequences: list[np.ndarray] = []
        depths: list[int | None] = []
        spans: list[tuple[EmbedJob, int, int]] = []
        for job in ready:
            spans.append((job, len(sequences), len(sequences) + len(job.sequences)))
            sequences.extend(job.sequences)
            depths.extend([job.options.layers] * len(job.sequences))
        if not sequences:
            return
        normalized, pooled = self.encode(sequences, depths)
        for job, start, end in spans:  # each job's own steps fail it alone
            opts = job.options
            try:
                source = normalized if opts.normalize else pooled
                vectors = truncate_dimensions(source[start:end], opts.dimensions, opts.normalize)
                job.result = self.quantize(vectors, opts)
            except Exception as err:
                job.result = err

    post = staticmethod(result_of)

    def measure_tokens_per_s(self) -> float:
        """This model's speed on this machine, for the scheduler's first estimate, in the scheduler's units
        (`estimate_tokens`): 32 texts of about 128 tokens, tokenized and embedded as a request is, timed on a second
        run (the first one warms the session)."""
        texts = [f"measuring the speed of this embedding model, text {i}; " * 12 for i in range(32)]
        options = EmbedOptions(dimensions=self.config.width)
        self.core([self.pre(texts, options)])
        started = time.perf_counter()
        self.core([self.pre(texts, options)])
        return self.estimate_tokens(texts) / max(time.perf_counter() - started, 1e-6)

    def quantize(self, vectors: np.ndarray, options: EmbedOptions) -> np.ndarray:
        try:
            key = calibration_key(options.dimensions, options.layers)
            return quantize(vectors, options.precision, self.ranges.get(key))
        except ValueError as err:  # a model exported without the calibration ranges it claims
            raise BackendError(f"precision {options.precision}: {err}") from None

    def embed(self, texts: Sequence[str], **options: Any) -> np.ndarray:
        """In-process convenience: one request, errors raised."""
        job = self.pre(texts, parse_options(options, self.config))
        self.core([job])
        return self.post(job)
