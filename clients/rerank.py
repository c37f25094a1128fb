"""FBNL rerank clients: pre-encode passages once (index time), rerank them for every later query.
`AsyncRerankClient` (asyncio) and `RerankClient`, the same client run synchronously.

Three ways to name candidates: `documents` (texts; the server encodes only what its passage-state
cache misses), `passages=PassageStates` (states you keep beside your documents), or `passages=[ids]`
(ids of passages the server has cached, e.g. by `warm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from nestrank.clients.base import AsyncModelClient, gather_all
from nestrank.clients.chunking import split_by_length
from nestrank.clients.sync import SyncClient, blocking
from nestrank.clients.tensors import array_input, encode_text, encode_texts, output, requested, text_input
from nestrank.clients.transport import DEFAULT_URL
from nestrank.protocol.errors import BackendError, ValidationError
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


def _candidates(documents, passages) -> tuple[list[bytes] | None, PassageStates | list[bytes] | None, int]:
    """The candidates as they go on the wire (texts encoded), each checked; and how many there are."""
    if (documents is None) == (passages is None):
        raise ValidationError(DOCUMENTS, "pass exactly one of documents= or passages=")
    if documents is not None:
        documents = encode_texts(DOCUMENTS, documents)
        return documents, None, len(documents)
    if isinstance(passages, PassageStates):
        if len(passages) == 0:
            raise ValidationError(PASSAGE_STATES, "no passages; send at least one")
        return None, passages, len(passages)
    passages = encode_texts(PASSAGE_IDS, passages)
    return None, passages, len(passages)


def _request(query: bytes, chunk: np.ndarray, documents, passages) -> list:
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


def _ranked(result, chunk: np.ndarray) -> list[tuple[int, float, str]]:
    """(index into the candidates, score, passage id) for one response; a BackendError if it does not fit."""
    scores = output(result, SCORES)
    indices, ids = output(result, INDICES, scores.shape), output(result, PASSAGE_IDS, scores.shape)
    if scores.ndim != 2 or scores.shape[0] != 1 or not ((0 <= indices) & (indices < len(chunk))).all():
        raise BackendError(f"the server's ranking (shape {list(scores.shape)}) does not fit {len(chunk)} candidates")
    return [(int(chunk[i]), float(s), pid.decode()) for i, s, pid in zip(indices[0], scores[0], ids[0])]


class AsyncRerankClient(AsyncModelClient[RerankerConfig]):
    """Rerankings from a served FBNL reranker, and passage states to keep (arguments: `AsyncModelClient`)."""

    config_type = RerankerConfig
    default_model = "kalm-reranker"
    default_timeout_s = 600.0  # 100 passages encoded per request took 117 s on 2 CPU cores (README)

    async def rerank(self, query: str, documents: Sequence[str] | None = None, *, passages=None,
                     instruction: str | None = None, top_n: int | None = None, compression_ratio: int | None = None,
                     return_documents: bool = False) -> list[RankedPassage]:  # fmt: skip
        """Candidates by descending score; `index` points into what you sent. Lists over the server's
        `max_candidates` go out as several requests at once and are merged exactly (scores are pointwise)."""
        encoded_query = encode_text(QUERY, query)
        if not query.strip():
            raise ValidationError(QUERY, "empty; send the query text")
        wire_documents, passages, count = _candidates(documents, passages)
        asked = dict(instruction=instruction, top_n=top_n, compression_ratio=compression_ratio)
        params = {k: v for k, v in asked.items() if v is not None}
        if isinstance(passages, PassageStates):
            params["states_ratio"] = passages.ratio
            params.setdefault("compression_ratio", passages.ratio)
        if not isinstance(return_documents, bool):
            raise ValidationError("return_documents", f"must be true or false, got {return_documents!r:.40}")

        async def work(deadline: float) -> list[RankedPassage]:
            config = (await self._model_info(deadline)).config
            parse_rerank_options(params, config)  # the server's own rules, before sending
            size = config.max_candidates
            chunks = [np.arange(s, min(s + size, count)) for s in range(0, count, size)]
            outputs = requested(SCORES, INDICES, PASSAGE_IDS)

            async def send(chunk: np.ndarray):
                inputs = _request(encoded_query, chunk, wire_documents, passages)
                return await self._infer(self.model, inputs, outputs, params, deadline)

            results = await gather_all(send(chunk) for chunk in chunks)
            keep = return_documents and wire_documents is not None
            ranked = [
                RankedPassage(index, score, pid, wire_documents[index].decode() if keep else None)
                for chunk, result in zip(chunks, results)
                for index, score, pid in _ranked(result, chunk)
            ]
            ranked.sort(key=lambda r: (-r.score, r.index))
            return ranked[:top_n] if top_n else ranked

        return await self._call(work)

    async def encode_passages(self, documents: Sequence[str], *, compression_ratio: int | None = None,
                              progress: bool = False) -> PassageStates:  # fmt: skip
        """Pooled states for your documents, to keep and reuse (the query plays no part)."""
        encoded = encode_texts(DOCUMENTS, documents)

        async def work(deadline: float) -> PassageStates:
            config = (await self._model_info(deadline)).config
            ratio = compression_ratio or config.default_ratio
            parse_rerank_options({"compression_ratio": ratio}, config)
            chunks = split_by_length([len(d) for d in encoded], ENCODE_BATCH)
            with tqdm(total=len(encoded), disable=not progress, unit="doc") as bar:

                async def send(chunk: np.ndarray) -> PassageStates:
                    texts = [encoded[i] for i in chunk]
                    inputs = [text_input(DOCUMENTS, texts, [len(texts), 1])]
                    outputs = requested(PASSAGE_STATES, PASSAGE_COUNTS)
                    parameters = {"compression_ratio": ratio}
                    result = await self._infer(f"{self.model}_encode", inputs, outputs, parameters, deadline)
                    states = output(result, PASSAGE_STATES)
                    counts = output(result, PASSAGE_COUNTS, states.shape[:2])
                    if len(states) != len(texts):
                        raise BackendError(f"the server encoded {len(states)} passages for {len(texts)} documents")
                    bar.update(len(texts))
                    return PassageStates.from_padded(states, counts, ratio, [passage_id(t.decode()) for t in texts])

                parts = await gather_all(send(chunk) for chunk in chunks)
            order = np.argsort(np.concatenate(chunks), kind="stable")  # back to input order
            return PassageStates.concat(parts).subset(order)

        return await self._call(work)

    async def warm(self, documents: Sequence[str], *, compression_ratio: int | None = None) -> list[str]:
        """Encode into the server's passage-state cache; returns the ids to rerank by."""
        encoded = encode_texts(DOCUMENTS, documents)
        params = {"warm": True, **({"compression_ratio": compression_ratio} if compression_ratio is not None else {})}

        async def work(deadline: float) -> list[str]:
            parse_rerank_options(params, (await self._model_info(deadline)).config)
            chunks = [encoded[s : s + ENCODE_BATCH] for s in range(0, len(encoded), ENCODE_BATCH)]

            async def send(chunk: list[bytes]) -> list[str]:
                inputs = [text_input(DOCUMENTS, chunk, [1, len(chunk)])]
                result = await self._infer(self.model, inputs, requested(PASSAGE_IDS), params, deadline)
                return [pid.decode() for pid in output(result, PASSAGE_IDS, (1, len(chunk)))[0]]

            return [pid for ids in await gather_all(send(chunk) for chunk in chunks) for pid in ids]

        return await self._call(work)


class RerankClient(SyncClient):
    """The synchronous form of AsyncRerankClient (same arguments, same methods, blocking)."""

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = "kalm-reranker", **options):
        super().__init__(AsyncRerankClient, url, model, **options)

    info = blocking(AsyncRerankClient.info)
    rerank = blocking(AsyncRerankClient.rerank)
    encode_passages = blocking(AsyncRerankClient.encode_passages)
    warm = blocking(AsyncRerankClient.warm)
