"""FBNL reranking: passages → encoder → MEP (query-independent, cacheable); prompt + pooled states → scorer.

Used by the Triton models (serving/triton/rerank*.py), by the exporter's parity gate and by the
benchmark's in-process paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.passages import STATE_DTYPE, PassageStates
from nestrank.protocol.reranking import RerankerConfig
from nestrank.serving.pipeline import mep
from nestrank.serving.pipeline.batching import length_buckets
from nestrank.serving.pipeline.tokenization import char_limit, cut, pad, pad_token_id

ENCODER_FILE = "encoder.onnx"
SCORER_FILE = "scorer.onnx"
TOKENIZER_FILE = "tokenizer.json"
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


def with_passage_fingerprint(config: RerankerConfig, encode_dir: str | Path) -> RerankerConfig:
    """`config` as exported, or, for an export from before fingerprints, with the fingerprint computed from its
    `_encode` files now (every model of the reranker computes the same)."""
    if config.passage_fingerprint:
        return config
    return dataclasses.replace(config, passage_fingerprint=passage_fingerprint(encode_dir, config))


class RerankTokenizer:
    """The official KaLM-Reranker-V1 tokenization, on the tokenizer the checkpoint's `AutoTokenizer` builds.

    Passages: the document template, with the tokenizer's special tokens only if the config says so (KaLM:
    no), cut at max_passage_tokens. Query: tokenized without special tokens, cut at max_query_tokens, decoded
    (special tokens kept, no clean-up) and put into the prompt template, which carries its own special tokens
    and is never cut: the answer position stays where training put it.
    """

    def __init__(self, tokenizer_json: str | Path, config: RerankerConfig):
        self.config = config
        self._passages = self._load(tokenizer_json, config.max_passage_tokens)
        self._queries = self._load(tokenizer_json, config.max_query_tokens)
        self._prompts = self._load(tokenizer_json, None)
        self.pad_id = pad_token_id(self._passages)
        # Raw texts are cut before tokenizing (a 5 MB document costs what its first 1024 tokens cost).
        self.max_passage_chars = char_limit(self._passages, config.max_passage_tokens)
        self.max_query_chars = char_limit(self._queries, config.max_query_tokens)

    @staticmethod
    def _load(tokenizer_json: str | Path, max_length: int | None) -> Tokenizer:
        tokenizer = Tokenizer.from_file(str(tokenizer_json))
        tokenizer.no_padding()
        if max_length is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(max_length)
        return tokenizer

    def encode_documents(self, documents: Sequence[str], field: str = "documents") -> list[np.ndarray]:
        for i, doc in enumerate(documents):
            if not doc:
                raise ValidationError(f"{field}[{i}]", "empty string; send at least one character")
        texts = [self.config.document_template.format(document=cut(d, self.max_passage_chars)) for d in documents]
        encodings = self._passages.encode_batch(texts, add_special_tokens=self.config.passage_special_tokens)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def encode_prompt(self, query: str, instruction: str, truncate: bool = True) -> np.ndarray:
        if not query.strip():
            raise ValidationError("query", "empty; send the query text")
        if not truncate and len(query) > self.max_query_chars:
            raise ValidationError("query", f"{len(query)} characters exceed {self.max_query_chars}, more than "
                                  f"max_query_tokens {self.config.max_query_tokens} can hold "
                                  "(send truncate=true to cut it)")  # fmt: skip
        encoded = self._queries.encode(cut(query, self.max_query_chars), add_special_tokens=False)
        if encoded.overflowing and not truncate:
            count = len(self._prompts.encode(query, add_special_tokens=False).ids)
            raise ValidationError(
                "query", f"{count} tokens exceed max_query_tokens {self.config.max_query_tokens} "
                "(send truncate=true to cut it)",
            )  # fmt: skip
        query = self._queries.decode(encoded.ids, skip_special_tokens=False)
        text = self.config.prompt_template.format(instruction=instruction, query=query)
        start = [] if self.config.decoder_start_token_id is None else [self.config.decoder_start_token_id]
        return np.asarray(start + self._prompts.encode(text, add_special_tokens=False).ids, dtype=np.int64)


ENCODE_BATCH = 64  # passages per encoder run, and at most this many passages' worth of padded tokens
ENCODE_BATCH_TOKENS = 8


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

        profile = ShapeProfile.token_batches(("input_ids", "attention_mask"), ENCODE_BATCH, config.max_passage_tokens,
                                             ENCODE_BATCH_TOKENS * config.max_passage_tokens)  # fmt: skip
        return create_session(path, intra_op_threads=config.intra_op_threads, providers=providers, profile=profile)

    def encode_ids(self, sequences: Sequence[np.ndarray], ratios: int | Sequence[int],
                   dtype=STATE_DTYPE) -> list[PassageStates]:  # fmt: skip
        """Token ids → one pooled passage each; `ratios` is one ratio for all, or one per sequence. `dtype` other
        than float16 is for the parity gate only: everything served holds float16."""
        ratios = [ratios] * len(sequences) if isinstance(ratios, int) else list(ratios)
        out: list[PassageStates | None] = [None] * len(sequences)
        lengths = [len(s) for s in sequences]
        for idx in length_buckets(lengths, ENCODE_BATCH, ENCODE_BATCH_TOKENS * self.config.max_passage_tokens):
            input_ids, attention_mask = pad([sequences[i] for i in idx], self.tokenizer.pad_id)
            (states,) = self.session.run(["token_states"], {"input_ids": input_ids, "attention_mask": attention_mask})
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


SCORE_BATCH = 256  # candidates per scorer run


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
            ("decoder_input_ids", (1, 1), (batch, min(128, prompt)), (SCORE_BATCH, prompt)),
            ("passage_states", (1, 1, hidden), (batch, typical, hidden), (SCORE_BATCH, groups, hidden)),
            ("passage_mask", (1, 1), (batch, typical), (SCORE_BATCH, groups)),
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
            longest = int(lengths[idx].max())
            states = np.zeros((len(idx), longest, self.config.hidden_size), dtype=np.float32)
            mask = np.zeros((len(idx), longest), dtype=np.int64)
            for row, i in enumerate(idx):
                passage_states, counts = passages.passage(i)
                states[row, : len(counts)] = passage_states
                mask[row, : len(counts)] = counts > 0
            decoder_ids = np.broadcast_to(prompt_ids, (len(idx), len(prompt_ids))).copy()
            (batch_margins,) = self.session.run(
                ["margins"], {"decoder_input_ids": decoder_ids, "passage_states": states, "passage_mask": mask}
            )
            margins[idx] = batch_margins
        return margins


MAX_PROMPT_EXTRA_TOKENS = 4096  # room for the template and a long instruction beyond max_query_tokens


def check_score_inputs(config: RerankerConfig, prompt: np.ndarray, states: np.ndarray, counts: np.ndarray) -> None:
    """What `<name>_score` accepts (it is reachable from outside, like every model): a prompt of known token ids,
    states [N, G, H] and counts [N, G] within the model's limits, each passage with a valid group."""
    longest = config.max_query_tokens + MAX_PROMPT_EXTRA_TOKENS
    if prompt.ndim != 1 or not 0 < len(prompt) <= longest:
        raise ValidationError("decoder_input_ids", f"shape {list(prompt.shape)}; expected [L] with 1 <= L <= {longest}")
    if config.vocab_size and ((prompt < 0) | (prompt >= config.vocab_size)).any():
        raise ValidationError("decoder_input_ids", f"token ids must be in 0..{config.vocab_size - 1}")
    h, most = config.hidden_size, config.max_passage_tokens
    if states.ndim != 3 or states.shape[2] != h or not 0 < len(states) <= config.max_candidates:
        raise ValidationError("passage_states", f"shape {list(states.shape)}; expected [N, G, {h}], "
                              f"1 <= N <= {config.max_candidates}")  # fmt: skip
    if states.shape[1] > most or not np.isfinite(states).all():
        raise ValidationError("passage_states", f"at most {most} groups, all values finite")
    if states.nbytes > config.max_request_state_bytes:
        raise ValidationError("passage_states", f"{states.nbytes / 2**20:.1f} MiB exceed max_request_state_bytes "
                              f"{config.max_request_state_bytes / 2**20:.0f} MiB")  # fmt: skip
    if counts.shape != states.shape[:2] or (counts < 0).any() or (counts > most).any():
        raise ValidationError("passage_counts", f"shape {list(counts.shape)}, values 0..{most}; expected "
                              f"{list(states.shape[:2])}")  # fmt: skip
    empty = np.flatnonzero((counts > 0).sum(axis=1) == 0)
    if empty.size:
        raise ValidationError(f"passage_counts[{int(empty[0])}]", "no valid group; a passage needs tokens")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def rank(scores: np.ndarray, top_n: int | None) -> np.ndarray:
    """Indices by descending score (stable for ties), cut to top_n."""
    order = np.argsort(-scores, kind="stable")
    return order[:top_n] if top_n else order


@dataclass
class FBNLReranker:
    """The in-process pipeline, on an exported model directory's files."""

    config: RerankerConfig
    tokenizer: RerankTokenizer
    encoder: PassageEncoder
    scorer: Scorer

    @classmethod
    def load(cls, files: str | Path, config: RerankerConfig, providers: tuple[str, ...] | None = None,
             scorer_files: str | Path | None = None) -> FBNLReranker:  # fmt: skip
        """From one folder holding both graphs and the tokenizer (or the scorer in `scorer_files`)."""
        files = Path(files)
        tokenizer = RerankTokenizer(files / TOKENIZER_FILE, config)
        encoder = PassageEncoder.open_session(files / ENCODER_FILE, config, providers)
        scorer_path = Path(scorer_files or files) / SCORER_FILE
        scorer = Scorer.open_session(scorer_path, config, providers)
        return cls(config, tokenizer, PassageEncoder(config, tokenizer, encoder), Scorer(config, scorer))

    @classmethod
    def from_repository(cls, repository: str | Path, name: str, config: RerankerConfig,
                        providers: tuple[str, ...] | None = None) -> FBNLReranker:  # fmt: skip
        """From an exported model repository (`<name>_encode/1`, `<name>_score/1`)."""
        repository = Path(repository)
        return cls.load(repository / f"{name}_encode" / "1", config, providers,
                        scorer_files=repository / f"{name}_score" / "1")  # fmt: skip

    def margins(self, query: str, documents: Sequence[str], ratio: int, instruction: str | None = None) -> np.ndarray:
        prompt = self.tokenizer.encode_prompt(query, instruction or self.config.default_instruction)
        return self.scorer.margins(prompt, self.encoder.encode(documents, ratio))
