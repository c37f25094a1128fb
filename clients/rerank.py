"""FBNL rerank clients: pre-encode passages once (index time), rerank them for every later query.
`AsyncRerankClient` (asyncio) and `RerankClient`, the same client run synchronously.

Three ways to name candidates: `documents` (texts; the server encodes only what its passage store lacks),
`passages=PassageStates` (states you keep beside your documents), or `passages=[ids]` (your own ids, given to
`index` or `nestrank index`, or the content ids `warm` returns).
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
from nestrank.protocol.errors import BackendError, ValidationError
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import (
    DOCUMENTS,
    INDICES,
    PASSAGE_COUNTS,
    PASSAGE_FINGERPRINT,
    PASSAGE_IDS,
    PASSAGE_STATES,
    PASSAGE_TOKENS,
    QUERY,
    SCORES,
    STORED_BYTES,
    RerankerConfig,
    parse_rerank_options,
    passage_id,
)

__all__ = ["AsyncRerankClient", "Indexed", "PassageStates", "RankedPassage", "RerankClient"]
ENCODE_BATCH = 32  # documents per request to `<model>_encode`


@dataclass(frozen=True)
class Indexed:
    """What `index` (or `warm`) did per document: its content id, the tokens encoded for it now, and the bytes
    written to the store for it (0: it was stored already, so it was skipped)."""

    content_ids: list[str]
    tokens: np.ndarray
    stored_bytes: np.ndarray


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
            if passages.fingerprint != config.passage_fingerprint:  # the server's rule, before sending
                raise ValidationError("passage_fingerprint", f"the states were made by the model with passage "
                                      f"fingerprint {passages.fingerprint or 'none (an older file)'}, and "
                                      f"{self.model}'s is {config.passage_fingerprint}: re-encode the documents "
                                      "with encode_passages against it")  # fmt: skip
            params["states_ratio"] = passages.ratio
            params["passage_fingerprint"] = passages.fingerprint
            params.setdefault("compression_ratio", passages.ratio)
        parse_rerank_options(params, config)  # the server's own rules, before sending
        names = (SCORES, INDICES, PASSAGE_IDS)
        per_request = config.candidates_per_request(params.get("compression_ratio", config.default_ratio))
        if isinstance(passages, PassageStates):  # as sent: their own size
            longest = config.state_bytes(int(passages.lengths.max()))
            per_request = max(1, min(config.max_candidates, config.max_request_state_bytes // longest))
        chunks = [np.arange(s, min(s + per_request, count)) for s in range(0, count, per_request)]
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
            outputs = requested(PASSAGE_STATES, PASSAGE_COUNTS, PASSAGE_FINGERPRINT)
            result = await self._infer(f"{self.model}_encode", inputs, outputs, {"compression_ratio": ratio})
            bar.update(len(texts))
            states, counts = result.as_numpy(PASSAGE_STATES), result.as_numpy(PASSAGE_COUNTS)
            fingerprints = {f.decode() for f in result.as_numpy(PASSAGE_FINGERPRINT).reshape(-1)}
            if len(fingerprints) != 1:
                raise BackendError(f"{self.model}_encode answered passage fingerprints {sorted(fingerprints)}")
            return PassageStates.from_padded(states, counts, ratio, [passage_id(t) for t in texts], fingerprints.pop())

        try:
            parts = await self._gather(send(chunk) for chunk in chunks)
        finally:
            bar.close()
        order = np.argsort(np.concatenate(chunks), kind="stable")  # back to input order
        return PassageStates.concat(parts).subset(order)

    async def warm(self, documents: Sequence[str], *, compression_ratio: int | None = None) -> list[str]:
        """Encode into the server's passage store (on-demand entries, which a full store may evict); returns the
        content ids to rerank by."""
        return (await self._store(documents, None, compression_ratio)).content_ids

    async def index(self, documents: Sequence[str], ids: Sequence[str], *,
                    compression_ratio: int | None = None) -> Indexed:  # fmt: skip
        """Keep `documents` in the server's passage store for good, under your `ids` (rerank by them from any
        replica sharing the store). Documents whose id already names the same text, stored at this ratio, are
        skipped, so a rerun is idempotent. `nestrank index` does this for a whole corpus."""
        ids = list(ids)
        if isinstance(ids, str) or len(ids) != len(documents):
            raise ValidationError("ids", f"one id per document: {len(ids)} ids for {len(documents)} documents")
        return await self._store(documents, ids, compression_ratio)

    async def _store(self, documents, ids, compression_ratio) -> Indexed:
        if isinstance(documents, str):
            raise ValidationError(DOCUMENTS, "expected a list, got a single string")
        documents = list(documents)
        if not documents:
            raise ValidationError(DOCUMENTS, "nothing to store; send at least one document")
        params = {"warm": True, **({"compression_ratio": compression_ratio} if compression_ratio else {})}
        starts = range(0, len(documents), ENCODE_BATCH)

        def request(start):
            chunk = documents[start : start + ENCODE_BATCH]
            inputs = [text_input(DOCUMENTS, chunk, [1, len(chunk)])]
            if ids is not None:
                inputs.append(text_input(PASSAGE_IDS, ids[start : start + ENCODE_BATCH], [1, len(chunk)]))
            return self._infer(self.model, inputs, requested(PASSAGE_IDS, PASSAGE_TOKENS, STORED_BYTES), params)

        results = await self._gather(request(start) for start in starts)
        return Indexed(
            content_ids=[pid.decode() for result in results for pid in result.as_numpy(PASSAGE_IDS)[0]],
            tokens=np.concatenate([result.as_numpy(PASSAGE_TOKENS)[0] for result in results]),
            stored_bytes=np.concatenate([result.as_numpy(STORED_BYTES)[0] for result in results]),
        )


class RerankClient(SyncClient):
    """The synchronous form of AsyncRerankClient (same arguments, same methods, blocking)."""

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = "kalm-reranker", **options):
        super().__init__(AsyncRerankClient, url, model, **options)

    info = blocking(AsyncRerankClient.info)
    rerank = blocking(AsyncRerankClient.rerank)
    encode_passages = blocking(AsyncRerankClient.encode_passages)
    warm = blocking(AsyncRerankClient.warm)
    index = blocking(AsyncRerankClient.index)
