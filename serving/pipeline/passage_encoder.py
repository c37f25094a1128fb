"""The reranker's passage side, independent of any query: documents → token states (the encoder graph) → MEP pooling
at a ratio → passage states stamped with the model's passage fingerprint (what stores key them by)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nestrank.protocol import graphs as g
from nestrank.protocol.errors import ValidationError
from nestrank.protocol.passages import STATE_DTYPE, PassageStates
from nestrank.protocol.reranking import RerankerConfig
from nestrank.serving.pipeline import mep
from nestrank.serving.pipeline.batching import length_buckets
from nestrank.serving.pipeline.stages import result_of
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, RerankTokenizer, pad

ENCODER_FILE = "encoder.onnx"
EMBEDDING_FILE = "embedding.data"  # the input embedding, external to both graphs (one file, hard-linked)
# What a passage's states depend on, of an `_encode` model's files: the graph, its weights, the tokenizer.
PASSAGE_FILES = (ENCODER_FILE, ENCODER_FILE + ".data", EMBEDDING_FILE, TOKENIZER_FILE)


def passage_fingerprint(encode_dir: str | Path, config: RerankerConfig) -> str:
    """The model's passage fingerprint: a hash (128 bits of SHA-256, hex) of everything a passage's pooled states
    depend on, namely the encoder's graph and weights, the tokenizer, the passage template, the passage limit, the
    pooling code's version and the stored dtype. Stores key states by it: a model exported with other weights never
    reads states another made."""
    digest = hashlib.sha256()
    settings = {"document_template": config.document_template, "max_passage_tokens": config.max_passage_tokens,
                "passage_special_tokens": config.passage_special_tokens, "hidden_size": config.hidden_size,
                "pooling": mep.VERSION, "dtype": np.dtype(STATE_DTYPE).name}  # fmt: skip
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name in PASSAGE_FILES:
        path = Path(encode_dir) / name
        if path.is_file():
            digest.update(name.encode() + b"\0")
            with path.open("rb") as f:
                while block := f.read(1 << 23):
                    digest.update(block)
    return digest.hexdigest()[:32]


@dataclass
class EncodeJob:
    """One `_encode` request (PassageEncoder.pre): its token ids and ratio; `result` its PassageStates, or its error
    (PassageEncoder.core)."""

    sequences: list[np.ndarray]
    ratio: int
    result: object = field(default=None)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


class PassageEncoder:
    """Documents → pooled passages at a ratio, length-bucketed like the embedder, stamped with the model's passage
    fingerprint."""

    def __init__(self, config: RerankerConfig, tokenizer: RerankTokenizer, session):
        self.config = config
        self.tokenizer = tokenizer
        self.session = session

    @staticmethod
    def open_session(path: str | Path, config: RerankerConfig, providers: tuple[str, ...] | None = None):
        """The encoder's session, its TensorRT profile covering every batch `encode_ids` cuts."""
        from nestrank.serving.pipeline.runtime import ShapeProfile, create_session

        profile = ShapeProfile.token_batches(g.TOKEN_INPUTS, config.max_run_sequences, config.max_passage_tokens,
                                             max(config.max_run_tokens, config.max_passage_tokens))  # fmt: skip
        return create_session(path, intra_op_threads=config.intra_op_threads, providers=providers, profile=profile)

    def encode_ids(self, sequences: Sequence[np.ndarray], ratios: int | Sequence[int],
                   dtype=STATE_DTYPE) -> list[PassageStates]:  # fmt: skip
        """Token ids → one pooled passage each; `ratios` is one ratio for all, or one per sequence. `dtype` other
        than float16 is for the parity gate only: everything served holds float16."""
        ratios = [ratios] * len(sequences) if isinstance(ratios, int) else list(ratios)
        out: list[PassageStates | None] = [None] * len(sequences)
        lengths = [len(s) for s in sequences]
        for idx in length_buckets(lengths, self.config.max_run_sequences, self.config.max_run_tokens):
            input_ids, attention_mask = pad([sequences[i] for i in idx], self.tokenizer.pad_id)
            (states,) = self.session.run([g.TOKEN_STATES], {g.INPUT_IDS: input_ids, g.ATTENTION_MASK: attention_mask})
            for ratio in sorted({ratios[i] for i in idx}):
                rows = [row for row, i in enumerate(idx) if ratios[i] == ratio]
                pooled, counts = mep.pool(states[rows], attention_mask[rows], ratio)
                for k, row in enumerate(rows):
                    valid = np.flatnonzero(counts[k])
                    end = int(valid[-1]) + 1 if valid.size else 0
                    out[idx[row]] = PassageStates.from_passages(
                        [(pooled[k, :end], counts[k, :end])], ratio, fingerprint=self.config.passage_fingerprint,
                        dtype=dtype,
                    )  # fmt: skip
        return out

    def encode(self, documents: Sequence[str], ratio: int, dtype=STATE_DTYPE) -> PassageStates:
        return PassageStates.concat(self.encode_ids(self.tokenizer.encode_documents(documents), ratio, dtype))

    # -- the Stage (stages.py) -----------------------------------------------------------------------------------

    def pre(self, documents: Sequence[str], ratio: int) -> EncodeJob:
        """One request's job: its documents checked (at least one, none empty: refused here, before they can share
        an execution) and tokenized."""
        if not documents:
            raise ValidationError("documents", "no documents in the request; send at least one")
        return EncodeJob(self.tokenizer.encode_documents(documents), ratio)

    def core(self, jobs: Sequence[EncodeJob]) -> None:
        """Every job's passages encoded together (length-bucketed across jobs), each job's `result` its own
        PassageStates."""
        sequences = [s for job in jobs for s in job.sequences]
        ratios = [job.ratio for job in jobs for _ in job.sequences]
        passages = self.encode_ids(sequences, ratios)
        start = 0
        for job in jobs:
            job.result = PassageStates.concat(passages[start : start + len(job.sequences)])
            start += len(job.sequences)

    post = staticmethod(result_of)

    def measure_tokens_per_s(self) -> float:
        """This model's speed on this machine in passage tokens/s, for the scheduler's first estimate: 16 passages of
        about 128 tokens, timed on a second run (the first one warms the session)."""
        documents = [f"measuring the speed of this passage encoder, passage {i}; " * 12 for i in range(16)]
        job = self.pre(documents, self.config.default_ratio)
        self.core([job])
        started = time.perf_counter()
        self.core([job])
        return job.tokens / max(time.perf_counter() - started, 1e-6)
