"""FBNL reranking: passages → encoder → MEP (query-independent, cacheable); prompt + pooled states → scorer.

Used by the Triton models (serving/models/rerank*.py), by the exporter's parity gate and by the
benchmark's in-process paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.passages import pack, trim, unpack
from nestrank.protocol.reranking import RerankerConfig
from nestrank.serving import mep
from nestrank.serving.batching import length_buckets
from nestrank.serving.tokenization import char_limit, cut, pad, pad_token_id

ENCODER_FILE = "encoder.onnx"
SCORER_FILE = "scorer.onnx"
TOKENIZER_FILE = "tokenizer.json"
EMBEDDING_FILE = "embedding.data"  # the input embedding, external to both graphs (one file, hard-linked)


@dataclass(frozen=True)
class PooledPassage:
    """One passage's MEP states at `ratio`: [G, H] float32 means and [G] int32 token counts."""

    states: np.ndarray
    counts: np.ndarray
    ratio: int

    @property
    def nbytes(self) -> int:
        return self.states.nbytes + self.counts.nbytes

    def at_ratio(self, ratio: int) -> PooledPassage:
        """Exact re-pooling to a multiple of the stored ratio."""
        if ratio == self.ratio:
            return self
        if ratio % self.ratio:
            raise ValidationError("compression_ratio", f"{ratio} is not a multiple of the stored ratio {self.ratio}")
        states, counts = mep.repool(self.states[None], self.counts[None], ratio // self.ratio)
        return PooledPassage(states[0], counts[0], ratio)


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
    """Documents → PooledPassage at a ratio, length-bucketed like the embedder."""

    def __init__(self, config: RerankerConfig, tokenizer: RerankTokenizer, session):
        self.config = config
        self.tokenizer = tokenizer
        self.session = session

    @staticmethod
    def open_session(path: str | Path, config: RerankerConfig, providers: tuple[str, ...] | None = None):
        """The encoder's session, its TensorRT profile covering every batch `encode_ids` cuts."""
        from nestrank.serving.runtime import ShapeProfile, create_session

        profile = ShapeProfile.token_batches(("input_ids", "attention_mask"), ENCODE_BATCH, config.max_passage_tokens,
                                             ENCODE_BATCH_TOKENS * config.max_passage_tokens)  # fmt: skip
        return create_session(path, intra_op_threads=config.intra_op_threads, providers=providers, profile=profile)

    def encode_ids(self, sequences: Sequence[np.ndarray], ratios: int | Sequence[int]) -> list[PooledPassage]:
        """Token ids → pooled passages; `ratios` is one ratio for all, or one per sequence."""
        ratios = [ratios] * len(sequences) if isinstance(ratios, int) else list(ratios)
        out: list[PooledPassage | None] = [None] * len(sequences)
        lengths = [len(s) for s in sequences]
        for idx in length_buckets(lengths, ENCODE_BATCH, ENCODE_BATCH_TOKENS * self.config.max_passage_tokens):
            input_ids, attention_mask = pad([sequences[i] for i in idx], self.tokenizer.pad_id)
            (states,) = self.session.run(["token_states"], {"input_ids": input_ids, "attention_mask": attention_mask})
            for row, i in enumerate(idx):
                pooled, counts = mep.pool(states[row : row + 1], attention_mask[row : row + 1], ratios[i])
                out[i] = PooledPassage(*trim(pooled[0], counts[0]), ratios[i])
        return out

    def encode(self, documents: Sequence[str], ratio: int) -> list[PooledPassage]:
        return self.encode_ids(self.tokenizer.encode_documents(documents), ratio)


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
        from nestrank.serving.runtime import ShapeProfile

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
        from nestrank.serving.runtime import create_session

        return create_session(path, intra_op_threads=config.intra_op_threads, providers=providers,
                              profile=Scorer.profile(config))  # fmt: skip

    def margins(self, prompt_ids: np.ndarray, passages: Sequence[PooledPassage]) -> np.ndarray:
        """logit(yes) - logit(no) per passage, in input order."""
        margins = np.empty(len(passages), dtype=np.float32)
        lengths = [len(p.counts) for p in passages]
        budget = max(self.config.score_batch_tokens, max(lengths, default=1))
        for idx in length_buckets(lengths, SCORE_BATCH, budget, min_fill=0.8):
            longest = max(lengths[i] for i in idx)
            states = np.zeros((len(idx), longest, self.config.hidden_size), dtype=np.float32)
            mask = np.zeros((len(idx), longest), dtype=np.int64)
            for row, i in enumerate(idx):
                states[row, : lengths[i]] = passages[i].states
                mask[row, : lengths[i]] = passages[i].counts > 0
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
    if counts.shape != states.shape[:2] or (counts < 0).any() or (counts > most).any():
        raise ValidationError("passage_counts", f"shape {list(counts.shape)}, values 0..{most}; expected "
                              f"{list(states.shape[:2])}")  # fmt: skip
    empty = np.flatnonzero((counts > 0).sum(axis=1) == 0)
    if empty.size:
        raise ValidationError(f"passage_counts[{int(empty[0])}]", "no valid group; a passage needs tokens")


def stack(passages: Sequence[PooledPassage], dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Pooled passages → the wire's padded states and counts (the contract's `pack`)."""
    return pack([(p.states, p.counts) for p in passages], dtype)


def unstack(states: np.ndarray, counts: np.ndarray, ratio: int) -> list[PooledPassage]:
    """The wire's padded states and counts → pooled passages at `ratio` (the contract's `unpack`)."""
    return [PooledPassage(s.astype(np.float32), c.astype(np.int32), ratio) for s, c in unpack(states, counts)]


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
    def from_repository(cls, repository: str | Path, name: str, config: RerankerConfig) -> FBNLReranker:
        """From an exported model repository (`<name>_encode/1`, `<name>_score/1`)."""
        repository = Path(repository)
        return cls.load(repository / f"{name}_encode" / "1", config, scorer_files=repository / f"{name}_score" / "1")

    def margins(self, query: str, documents: Sequence[str], ratio: int, instruction: str | None = None) -> np.ndarray:
        prompt = self.tokenizer.encode_prompt(query, instruction or self.config.default_instruction)
        return self.scorer.margins(prompt, self.encoder.encode(documents, ratio))
