"""The embed pipeline: texts → tokens → ONNX (encoder + pooling + normalize) → Matryoshka → precision.

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
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, TextTokenizer, pad

MODEL_FILE = "model.onnx"
CALIBRATION_FILE = "calibration.npz"


@dataclass
class EmbedJob:
    """One request's texts and options; `sequences` are filled by Embedder.prepare, `result` by Embedder.run."""

    texts: Sequence[str]
    options: EmbedOptions
    sequences: list[np.ndarray] | None = field(default=None)
    result: np.ndarray | Exception | None = field(default=None)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences or ())


class Embedder:
    def __init__(self, config: EmbedderConfig, tokenizer: TextTokenizer, session, ranges: Mapping[int, np.ndarray]):
        self.config = config
        self.tokenizer = tokenizer
        self.session = session
        self.ranges = dict(ranges)

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
        session = create_session(model_dir / MODEL_FILE, intra_op_threads=config.intra_op_threads, providers=providers,
                                 profile=profile, tensorrt_fp16=config.tensorrt_fp16)  # fmt: skip
        ranges: dict[int, np.ndarray] = {}
        if (model_dir / CALIBRATION_FILE).exists():
            with np.load(model_dir / CALIBRATION_FILE) as stored:
                ranges = {int(k): stored[k] for k in stored.files}
        return cls(config, tokenizer, session, ranges)

    def encode(self, sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids → (normalised embeddings, pooled embeddings), both [N, width] float32, in order."""
        normalized = np.empty((len(sequences), self.config.width), dtype=np.float32)
        pooled = np.empty_like(normalized)
        buckets = length_buckets([len(s) for s in sequences], self.config.max_run_sequences, self.config.max_run_tokens)
        for idx in buckets:
            input_ids, attention_mask = pad([sequences[i] for i in idx], self.tokenizer.pad_id)
            out_norm, out_pooled = self.session.run(
                [g.EMBEDDINGS, g.POOLED_EMBEDDINGS], {g.INPUT_IDS: input_ids, g.ATTENTION_MASK: attention_mask}
            )
            normalized[idx] = out_norm
            pooled[idx] = out_pooled
        return normalized, pooled

    def prepare(self, job: EmbedJob) -> EmbedJob:
        """Validates and tokenizes one job (its prompt included); typed errors for what the request got wrong."""
        validate_texts(job.texts)
        prompt = self.config.prompt_for(job.options.input_type)
        texts = [prompt + t for t in job.texts] if prompt else job.texts
        job.sequences = self.tokenizer.encode(texts, truncate=job.options.truncate,
                                              direction=job.options.truncation_direction)  # fmt: skip
        return job

    def estimate_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the texts will take, from their length alone (about 3 characters a token, capped at max_length):
        what admission needs, without tokenizing on the thread that takes requests in (the worker tokenizes)."""
        return sum(min(self.config.max_length, len(t) // 3 + 2) for t in texts)

    def run(self, jobs: Sequence[EmbedJob]) -> Sequence[EmbedJob]:
        """Embeds every job's texts in one sorted pass (preparing those not prepared yet); each job gets its result
        or its own error."""
        ready = []
        for job in jobs:
            if job.sequences is None:
                try:
                    self.prepare(job)
                except Exception as err:  # bad input (typed), or a bug: this job's alone
                    job.result = err
                    continue
            ready.append(job)
        sequences: list[np.ndarray] = []
        spans: list[tuple[EmbedJob, int, int]] = []
        for job in ready:
            spans.append((job, len(sequences), len(sequences) + len(job.sequences)))
            sequences.extend(job.sequences)
        if not sequences:
            return jobs
        normalized, pooled = self.encode(sequences)
        for job, start, end in spans:  # each job's own steps fail it alone
            opts = job.options
            try:
                source = normalized if opts.normalize else pooled
                vectors = truncate_dimensions(source[start:end], opts.dimensions, opts.normalize)
                job.result = self.quantize(vectors, opts)
            except Exception as err:
                job.result = err
        return jobs

    def measure_tokens_per_s(self) -> float:
        """This model's speed on this machine, for the scheduler's first estimate, in the scheduler's units
        (`estimate_tokens`): 32 texts of about 128 tokens, tokenized and embedded as a request is, timed on a second
        run (the first one warms the session)."""
        texts = [f"measuring the speed of this embedding model, text {i}; " * 12 for i in range(32)]
        self.run([EmbedJob(texts, EmbedOptions(dimensions=self.config.width))])
        started = time.perf_counter()
        self.run([EmbedJob(texts, EmbedOptions(dimensions=self.config.width))])
        return self.estimate_tokens(texts) / max(time.perf_counter() - started, 1e-6)

    def quantize(self, vectors: np.ndarray, options: EmbedOptions) -> np.ndarray:
        try:
            return quantize(vectors, options.precision, self.ranges.get(options.dimensions))
        except ValueError as err:  # a model exported without the calibration ranges it claims
            raise BackendError(f"precision {options.precision}: {err}") from None

    def embed(self, texts: Sequence[str], **options: Any) -> np.ndarray:
        """In-process convenience: one request, errors raised."""
        job = self.prepare(EmbedJob(list(texts), parse_options(options, self.config)))
        self.run([job])
        if isinstance(job.result, Exception):
            raise job.result
        return job.result
