"""What the `<name>` rerank model does, free of Triton: resolve candidates (documents through the cache,
cached passage ids, or client-sent states), score them against one prompt, rank.

`encode` and `score` are injected: BLS calls inside Triton, in-process sessions in tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nestrank.protocol.errors import NotFoundError, ValidationError
from nestrank.protocol.parameters import shown
from nestrank.protocol.reranking import RerankerConfig, RerankOptions, passage_id
from nestrank.serving.passage_cache import PassageCache
from nestrank.serving.reranker import PooledPassage, RerankTokenizer, rank, sigmoid, unstack

EncodeFn = Callable[[list[str], int], list[PooledPassage]]
ScoreFn = Callable[[np.ndarray, list[PooledPassage]], np.ndarray]


@dataclass(frozen=True)
class Candidates:
    """Exactly one of: documents, passage ids, or states (+ counts) sent by the client."""

    documents: list[str] | None = None
    passage_ids: list[str] | None = None
    states: np.ndarray | None = None
    counts: np.ndarray | None = None

    def count(self) -> int:
        for given in (self.documents, self.passage_ids, self.states):
            if given is not None:
                return len(given)
        return 0


@dataclass(frozen=True)
class RerankResult:
    indices: np.ndarray  # into the candidates, best first
    scores: np.ndarray  # aligned with indices
    passage_ids: list[str]  # aligned with indices ("" for client-sent states)


class RerankService:
    def __init__(self, config: RerankerConfig, tokenizer: RerankTokenizer, cache: PassageCache,
                 encode: EncodeFn, score: ScoreFn):  # fmt: skip
        self.config = config
        self.tokenizer = tokenizer
        self.cache = cache
        self.encode = encode
        self.score = score

    def _from_documents(self, documents: list[str], ratio: int) -> tuple[list[PooledPassage], list[str]]:
        ids = [passage_id(d) for d in documents]
        found = [self.cache.get(pid, ratio) for pid in ids]
        missing = {pid: doc for pid, doc, hit in zip(ids, documents, found) if hit is None}  # dedupes repeats
        if missing:
            for pid, passage in zip(missing, self.encode(list(missing.values()), ratio)):
                self.cache.put(pid, passage)
                missing[pid] = passage
        return [hit if hit is not None else missing[pid] for pid, hit in zip(ids, found)], ids

    def _check_documents(self, documents: list[str]) -> None:
        if len(documents) > self.config.max_candidates:
            raise ValidationError("documents", f"{len(documents)} exceed max_candidates {self.config.max_candidates}")
        for i, doc in enumerate(documents):
            if not doc:
                raise ValidationError(f"documents[{i}]", "empty string; send at least one character")

    def _from_ids(self, ids: list[str], ratio: int) -> list[PooledPassage]:
        passages = []
        for i, pid in enumerate(ids):
            hit = self.cache.get(pid, ratio) if len(pid) <= 64 else None
            if hit is None:
                hint = "send the document, or warm it (each replica keeps its own cache)"
                raise NotFoundError(f"passage_ids[{i}]: unknown passage id {shown(pid)} at ratio {ratio} ({hint})")
            passages.append(hit)
        return passages

    def _from_states(self, states: np.ndarray, counts: np.ndarray, stored: int, ratio: int) -> list[PooledPassage]:
        hidden = self.config.hidden_size
        if states.ndim != 3 or states.shape[2] != hidden:
            raise ValidationError("passage_states", f"shape {list(states.shape)}; expected [N, groups, {hidden}]")
        most = -(-self.config.max_passage_tokens // stored)
        if states.shape[1] > most:
            raise ValidationError("passage_states", f"{states.shape[1]} groups exceed {most}: max_passage_tokens "
                                  f"{self.config.max_passage_tokens} at ratio {stored}")  # fmt: skip
        if counts is None or counts.shape != states.shape[:2]:
            got = None if counts is None else list(counts.shape)
            raise ValidationError("passage_counts", f"shape {got}; expected {list(states.shape[:2])} like the states")
        if (counts < 0).any() or (counts > stored).any():
            raise ValidationError("passage_counts", f"each group holds 0..{stored} tokens at ratio {stored}")
        empty = np.flatnonzero(counts.sum(axis=1) == 0)
        if empty.size:
            raise ValidationError(f"passage_counts[{int(empty[0])}]", "no valid group; a passage needs tokens")
        if not np.isfinite(states).all():
            raise ValidationError("passage_states", "holds NaN or infinity")
        return [p.at_ratio(ratio) for p in unstack(states, counts, stored)]

    def warm(self, documents: list[str], ratio: int) -> list[str]:
        """Encode and cache; returns the passage ids to rerank by later."""
        if not documents:
            raise ValidationError("documents", "nothing to warm; send at least one document")
        self._check_documents(documents)
        return self._from_documents(documents, ratio)[1]

    def rerank(self, query: str, candidates: Candidates, options: RerankOptions) -> RerankResult:
        given = [n for n, v in (("documents", candidates.documents), ("passage_ids", candidates.passage_ids),
                                ("passage_states", candidates.states)) if v is not None]  # fmt: skip
        if len(given) != 1:
            raise ValidationError(
                "documents", f"send exactly one of documents, passage_ids, passage_states; got {given}"
            )
        n = candidates.count()
        if n == 0:
            raise ValidationError(given[0], "no candidates; send at least one")
        if n > self.config.max_candidates:
            raise ValidationError(given[0], f"{n} candidates exceed max_candidates {self.config.max_candidates}")
        prompt = self.tokenizer.encode_prompt(query, options.instruction, options.truncate)  # validates the query first
        ratio = options.compression_ratio
        ids = [""] * n
        if candidates.documents is not None:
            self._check_documents(candidates.documents)
            passages, ids = self._from_documents(candidates.documents, ratio)
        elif candidates.passage_ids is not None:
            passages, ids = self._from_ids(candidates.passage_ids, ratio), list(candidates.passage_ids)
        else:
            stored = options.states_ratio or ratio
            passages = self._from_states(candidates.states, candidates.counts, stored, ratio)
        scores = sigmoid(self.score(prompt, passages))
        order = rank(scores, options.top_n)
        return RerankResult(order.astype(np.int32), scores[order].astype(np.float32), [ids[i] for i in order])
