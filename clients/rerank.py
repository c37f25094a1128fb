"""FBNL rerank clients: pre-encode passages once (index time), rerank them for every later query.
`AsyncRerankClient` (asyncio) and `RerankClient`, the same client run synchronously.

Three ways to name candidates: `documents` (texts; the server encodes only what its passage-state
cache misses), `passages=PassageStates` (states you keep beside your documents), or `passages=[ids]`
(ids of passages the server has cached, e.g. by `warm`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from nestrank.clients.base import AsyncModelClient
from nestrank.clients.chunking import split_by_length
from nestrank.clients.sync import SyncClient, blocking
from nestrank.clients.tensors import array_input, requested, text_input
from nestrank.clients.transport import DEFAULT_URL
from nestrank.protocol.errors import ValidationError
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import (
    DOCUMENTS,
    INDICES,
    PASSAGE_COUNTS,
    PASSAGE_IDS,
    PASSAGE_STATES,
    QUERY,
    SCORES,
    RerankerConfig,
    parse_rerank_options,
    passage_id,
)

__all__ = ["AsyncRerankClient", "PassageStates", "RankedPassage", "RerankClient"]
ENCODE_BATCH = 32  # documents per request to `<model>_encode`


@dataclass(frozen=True)
class RankedPassage:
    index: int  # into the candidates you sent
    score: float
    passage_id: str
    document: str | None = None


def _candidates(documents, passages) -> int:
    if (documents is None) == (passages is None):
        raise ValidationError(DOCUMENTS, "pass exactly one of documents= or passages=")
    if isinstance(documents, str) or isinstance(passages, str):
        raise ValidationError(DOCUMENTS, "expected a list, got a single string")
    count = len(documents if documents is not None else passages)
    if count == 0:
        raise ValidationError(DOCUMENTS, "no candidates; send at least one")
    return count


def _request(query: str, chunk: np.ndarray, documents, passages) -> list:
    """One rerank request's tensors, each with the leading batch dimension of 1 the rerank model takes."""
    inputs = [text_input(QUERY, [query], [1, 1])]
    if documents is not None:
        return inputs + [text_input(DOCUMENTS, [documents[i] for i in chunk], [1, len(chunk)])]
    if isinstance(passages, PassageStates):
        states, counts = passages.padded(chunk)
        return inputs + [
            array_input(PASSAGE_STATES, states[None], "FP16"),
            array_input(PASSAGE_COUNTS, counts[None], "INT32"),
        ]
    return inputs + [text_input(PASSAGE_IDS, [passages[i] for i in chunk], [1, len(chunk)])]


class AsyncRerankClient(AsyncModelClient[RerankerConfig]):
    """Rerankings from a served FBNL reranker, and passage states to keep (arguments: `AsyncModelClient`)."""

    config_type = RerankerConfig
    default_model = "kalm-reranker"
    default_timeout_s = 120.0

    async def _gather(self, coroutines):
        gate = asyncio.Semaphore(max(1, self.concurrency))

        async def gated(coroutine):
            async with gate:
                return await coroutine

        return await asyncio.gather(*(gated(c) for c in coroutines))

    async def rerank(self, query: str, documents: Sequence[str] | None = None, *, passages=None,
                     instruction: str | None = None, top_n: int | None = None, compression_ratio: int | None = None,
                     return_documents: bool = False) -> list[RankedPassage]:  # fmt: skip
        """Candidates by descending score; `index` points into what you sent. Lists over the server's
        `max_candidates` go out as several requests at once and are merged exactly (scores are pointwise)."""
        count = _candidates(documents, passages)
        config = (await self.info()).config
        asked = dict(instruction=instruction, top_n=top_n, compression_ratio=compression_ratio)
        params = {k: v for k, v in asked.items() if v is not None}
        if isinstance(passages, PassageStates):
            params["states_ratio"] = passages.ratio
            params.setdefault("compression_ratio", passages.ratio)
        parse_rerank_options(params, config)  # the server's own rules, before sending
        names = (SCORES, INDICES, PASSAGE_IDS)
        chunks = [np.arange(s, min(s + config.max_candidates, count)) for s in range(0, count, config.max_candidates)]
        results = await self._gather(
            self._infer(self.model, _request(query, chunk, documents, passages), requested(*names), params)
            for chunk in chunks
        )
        ranked = []
        for chunk, result in zip(chunks, results):
            scores, indices, ids = (result.as_numpy(name)[0] for name in names)
            for idx, score, pid in zip(indices, scores, ids):
                index = int(chunk[idx])
                document = documents[index] if return_documents and documents is not None else None
                ranked.append(RankedPassage(index, float(score), pid.decode(), document))
        ranked.sort(key=lambda r: (-r.score, r.index))
        return ranked[:top_n] if top_n else ranked

    async def encode_passages(self, documents: Sequence[str], *, compression_ratio: int | None = None,
                              progress: bool = False) -> PassageStates:  # fmt: skip
        """Pooled states for your documents, to keep and reuse (the query plays no part)."""
        documents = list(documents)
        if not documents:
            raise ValidationError(DOCUMENTS, "nothing to encode; send at least one document")
        config = (await self.info()).config
        ratio = compression_ratio or config.default_ratio
        parse_rerank_options({"compression_ratio": ratio}, config)
        chunks = split_by_length([len(d) for d in documents], ENCODE_BATCH)
        bar = tqdm(total=len(documents), disable=not progress, unit="doc")

        async def send(chunk):
            texts = [documents[i] for i in chunk]
            inputs = [text_input(DOCUMENTS, texts, [len(texts), 1])]
            outputs = requested(PASSAGE_STATES, PASSAGE_COUNTS)
            result = await self._infer(f"{self.model}_encode", inputs, outputs, {"compression_ratio": ratio})
            bar.update(len(texts))
            states, counts = result.as_numpy(PASSAGE_STATES), result.as_numpy(PASSAGE_COUNTS)
            return PassageStates.from_padded(states, counts, ratio, [passage_id(t) for t in texts])

        try:
            parts = await self._gather(send(chunk) for chunk in chunks)
        finally:
            bar.close()
        order = np.argsort(np.concatenate(chunks), kind="stable")  # back to input order
        return PassageStates.concat(parts).subset(order)

    async def warm(self, documents: Sequence[str], *, compression_ratio: int | None = None) -> list[str]:
        """Encode into the server's passage-state cache; returns the ids to rerank by."""
        documents = list(documents)
        if not documents:
            raise ValidationError(DOCUMENTS, "nothing to warm; send at least one document")
        params = {"warm": True, **({"compression_ratio": compression_ratio} if compression_ratio else {})}
        chunks = [documents[s : s + ENCODE_BATCH] for s in range(0, len(documents), ENCODE_BATCH)]
        results = await self._gather(
            self._infer(self.model, [text_input(DOCUMENTS, chunk, [1, len(chunk)])], requested(PASSAGE_IDS), params)
            for chunk in chunks
        )
        return [pid.decode() for result in results for pid in result.as_numpy(PASSAGE_IDS)[0]]


class RerankClient(SyncClient):
    """The synchronous form of AsyncRerankClient (same arguments, same methods, blocking)."""

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = "kalm-reranker", **options):
        super().__init__(AsyncRerankClient, url, model, **options)

    info = blocking(AsyncRerankClient.info)
    rerank = blocking(AsyncRerankClient.rerank)
    encode_passages = blocking(AsyncRerankClient.encode_passages)
    warm = blocking(AsyncRerankClient.warm)
