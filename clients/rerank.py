"""FBNL rerank clients: pre-encode passages once (index time), rerank them for every later query.
`AsyncRerankClient` (asyncio) and `RerankClient`, the same client run synchronously.

Three ways to name candidates: `documents` (texts; the server encodes only what its passage store lacks),
`passages=PassageStates` (states you keep beside your documents), or `passages=[ids]` (your own ids, given to
`index` or `nestrank index`, or the content ids `warm` returns).
"""

from __future__ import annotations

import dataclasses
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
from nestrank.protocol.parameters import BULK, TRAFFIC_CLASS, TRAFFIC_CLASSES
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import (
    DOCUMENTS,
    ENCODE_RATIO,
    INDEX,
    INDICES,
    MARGINS,
    PASSAGE_COUNTS,
    PASSAGE_FINGERPRINT,
    PASSAGE_GROUPS,
    PASSAGE_IDS,
    PASSAGE_STATES,
    PASSAGE_TOKENS,
    QUERY,
    SCORES,
    STORED_BYTES,
    WARM,
    RerankerConfig,
    from_wire,
    parse_rerank_options,
    passage_id,
    wire_tensors,
)

__all__ = ["AsyncRerankClient", "Indexed", "PassageStates", "RankedPassage", "RerankClient"]


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
    score: float  # sigmoid(margin): the probability of "yes"
    passage_id: str
    document: str | None = None
    margin: float = 0.0  # logit(yes) - logit(no): what the order follows (scores saturate at 1.0)


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
        part = passages.slice(int(chunk[0]), int(chunk[-1]) + 1)  # chunks are consecutive
        datatypes = {PASSAGE_STATES: "FP16", PASSAGE_COUNTS: "INT32", PASSAGE_GROUPS: "INT32"}
        return inputs + [array_input(name, value[None], datatypes[name])
                         for name, value in wire_tensors(part).items()]  # fmt: skip
    return inputs + [text_input(PASSAGE_IDS, [passages[i] for i in chunk], [1, len(chunk)])]


def _check_fingerprint(passages: PassageStates, config: RerankerConfig, model: str) -> None:
    """The server's rule, before sending: states of another model would be a wrong answer."""
    if passages.fingerprint != config.passage_fingerprint:
        raise ValidationError("passage_fingerprint", f"the states were made by the model with passage fingerprint "
                              f"{passages.fingerprint or 'none (an older file)'}, and {model}'s is "
                              f"{config.passage_fingerprint}: re-encode the documents with encode_passages against "
                              "it")  # fmt: skip


def _ranked(result, chunk: np.ndarray) -> list[tuple[int, float, float, str]]:
    """(index into the candidates, score, margin, passage id) for one response; a BackendError if it does not
    fit."""
    scores = output(result, SCORES)
    indices, ids = output(result, INDICES, scores.shape), output(result, PASSAGE_IDS, scores.shape)
    margins = output(result, MARGINS, scores.shape)
    if scores.ndim != 2 or scores.shape[0] != 1 or not ((0 <= indices) & (indices < len(chunk))).all():
        raise BackendError(f"the server's ranking (shape {list(scores.shape)}) does not fit {len(chunk)} candidates")
    return [(int(chunk[i]), float(s), float(m), pid.decode())
            for i, s, m, pid in zip(indices[0], scores[0], margins[0], ids[0])]  # fmt: skip


def _priority(priority: str | None) -> dict:
    """The request parameter for a traffic class (None: the server's default for the kind of request)."""
    if priority is None:
        return {}
    if priority not in TRAFFIC_CLASSES:
        raise ValidationError("priority", f"{priority!r:.40} is not a traffic class; one of {TRAFFIC_CLASSES}")
    return {TRAFFIC_CLASS: priority}


class AsyncRerankClient(AsyncModelClient[RerankerConfig]):
    """Rerankings from a served FBNL reranker, and passage states to keep (arguments: `AsyncModelClient`)."""

    config_type = RerankerConfig
    default_model = "kalm-reranker"
    default_timeout_s = 600.0  # 100 passages encoded per request took 144 s on 2 CPU cores (bench/RESULTS.md)

    async def rerank(self, query: str, documents: Sequence[str] | None = None, *, passages=None,
                     instruction: str | None = None, top_n: int | None = None, compression_ratio: int | None = None,
                     return_documents: bool = False, priority: str | None = None) -> list[RankedPassage]:  # fmt: skip
        """Candidates by descending margin (their `score` is its sigmoid); `index` points into what you sent. Lists
        over the server's `max_candidates` go out as several requests at once and are merged exactly (scores are
        pointwise). `priority`: "interactive" (the default: ahead of bulk work, refused at once when the server
        would make it wait past its bound) or "bulk" (behind interactive work, waits for room)."""
        encoded_query = encode_text(QUERY, query)
        if not query.strip():
            raise ValidationError(QUERY, "empty; send the query text")
        wire_documents, passages, count = _candidates(documents, passages)
        asked = dict(instruction=instruction, top_n=top_n, compression_ratio=compression_ratio)
        params = {**{k: v for k, v in asked.items() if v is not None}, **_priority(priority)}
        if isinstance(passages, PassageStates):
            params["states_ratio"] = passages.ratio
            params["passage_fingerprint"] = passages.fingerprint
            params.setdefault("compression_ratio", passages.ratio)
        if not isinstance(return_documents, bool):
            raise ValidationError("return_documents", f"must be true or false, got {return_documents!r:.40}")

        async def work(deadline: float) -> list[RankedPassage]:
            config = (await self._model_info(deadline)).config
            parse_rerank_options(params, config)  # the server's own rules, before sending
            size = config.candidates_per_request(params.get("compression_ratio", config.default_ratio))
            if isinstance(passages, PassageStates):
                _check_fingerprint(passages, config, self.model)
                longest = config.state_bytes(int(passages.lengths.max()))  # as sent: their own size
                size = max(1, min(config.max_candidates, config.max_request_state_bytes // longest))
            chunks = [np.arange(s, min(s + size, count)) for s in range(0, count, size)]
            outputs = requested(SCORES, MARGINS, INDICES, PASSAGE_IDS)

            async def send(chunk: np.ndarray):
                inputs = _request(encoded_query, chunk, wire_documents, passages)
                return await self._infer(self.model, inputs, outputs, params, deadline)

            results = await gather_all(send(chunk) for chunk in chunks)
            keep = return_documents and wire_documents is not None
            ranked = [
                RankedPassage(index, score, pid, wire_documents[index].decode() if keep else None, margin)
                for chunk, result in zip(chunks, results)
                for index, score, margin, pid in _ranked(result, chunk)
            ]
            ranked.sort(key=lambda r: (-r.margin, r.index))
            return ranked[:top_n] if top_n else ranked

        return await self._call(work)

    async def encode_passages(self, documents: Sequence[str], *, compression_ratio: int | None = None,
                              progress: bool = False, priority: str = BULK) -> PassageStates:  # fmt: skip
        """Pooled states for your documents, to keep and reuse (the query plays no part). Index-time work: bulk by
        default (behind interactive work, waiting for room rather than refused)."""
        traffic = _priority(priority)
        encoded = encode_texts(DOCUMENTS, documents)

        async def work(deadline: float) -> PassageStates:
            config = (await self._model_info(deadline)).config
            ratio = compression_ratio or config.default_ratio
            parse_rerank_options({"compression_ratio": ratio}, config)
            # the served limits: bulk parts of bulk_encode_documents, so that interactive work waits behind small ones
            size = config.max_encode_documents if priority != BULK else config.bulk_encode_documents
            chunks = split_by_length([len(d) for d in encoded], min(size, config.max_encode_documents))
            with tqdm(total=len(encoded), disable=not progress, unit="doc") as bar:

                async def send(chunk: np.ndarray) -> PassageStates:
                    texts = [encoded[i] for i in chunk]
                    inputs = [text_input(DOCUMENTS, texts, [1, len(texts)])]
                    names = (PASSAGE_STATES, PASSAGE_COUNTS, PASSAGE_GROUPS)
                    outputs = requested(*names, PASSAGE_FINGERPRINT)
                    parameters = {ENCODE_RATIO: ratio, **traffic}
                    result = await self._infer(f"{self.model}_encode", inputs, outputs, parameters, deadline)
                    rows = [output(result, name)[0] for name in names]
                    fingerprints = {f.decode() for f in output(result, PASSAGE_FINGERPRINT).ravel()}
                    ids = [passage_id(t.decode()) for t in texts]
                    try:
                        if len(fingerprints) != 1:
                            raise ValidationError(PASSAGE_FINGERPRINT, f"{sorted(fingerprints)}; expected one")
                        passages = from_wire(*rows, ratio, fingerprints.pop())
                    except ValidationError as err:
                        raise BackendError(f"the server's passage states do not fit: {err}") from None
                    if len(passages) != len(texts):
                        raise BackendError(f"the server encoded {len(passages)} passages for {len(texts)} documents")
                    bar.update(len(texts))
                    return dataclasses.replace(passages, ids=tuple(ids))

                parts = await gather_all(send(chunk) for chunk in chunks)
            order = np.argsort(np.concatenate(chunks), kind="stable")  # back to input order
            return PassageStates.concat(parts).subset(order)

        return await self._call(work)

    async def warm(self, documents: Sequence[str], *, compression_ratio: int | None = None,
                   priority: str = BULK, progress: bool = False) -> list[str]:  # fmt: skip
        """Encode into the server's passage store (on-demand entries, which a full store may evict); returns the
        content ids to rerank by. Bulk by default (see `index`)."""
        stored = await self._store(WARM, encode_texts(DOCUMENTS, documents), None, compression_ratio, priority,
                                   progress)  # fmt: skip
        return stored.content_ids

    async def index(self, documents: Sequence[str], ids: Sequence[str], *, compression_ratio: int | None = None,
                    priority: str = BULK, progress: bool = False) -> Indexed:  # fmt: skip
        """Keep `documents` in the server's passage store for good, under your `ids` (rerank by them from any
        replica sharing the store). Documents whose id already names the same text, stored at this ratio, are
        skipped, so a rerun is idempotent. `nestrank index` does this for a whole corpus. Bulk by default: behind
        interactive work, in requests of the served `max_encode_documents` (what one lost request costs), each
        waiting for room (the server's retry hints) within the call's deadline."""
        encoded, encoded_ids = encode_texts(DOCUMENTS, documents), encode_texts("ids", ids)
        if len(encoded_ids) != len(encoded):
            raise ValidationError("ids", f"one id per document: {len(encoded_ids)} ids for {len(encoded)} documents")
        return await self._store(INDEX, encoded, encoded_ids, compression_ratio, priority, progress)

    async def _store(self, kind: str, encoded: list[bytes], ids: list[bytes] | None, compression_ratio: int | None,
                     priority: str, progress: bool) -> Indexed:  # fmt: skip
        params = {"kind": kind, **({"compression_ratio": compression_ratio} if compression_ratio is not None else {}),
                  **_priority(priority)}  # fmt: skip

        async def work(deadline: float) -> Indexed:
            config = (await self._model_info(deadline)).config
            parse_rerank_options(params, config)
            # the served limits (`nestrank serve --limit` may change them): bulk work in requests of
            # max_encode_documents (the server encodes them bulk_encode_documents at a time); interactive work in
            # requests as large as they may be (the server sends their chunks to `_encode` at once)
            most = config.candidates_per_request(params.get("compression_ratio", config.default_ratio))
            size = min(most, config.max_encode_documents) if priority == BULK else most
            starts = range(0, len(encoded), size)
            bar = tqdm(total=len(encoded), disable=not progress, unit="doc")

            async def send(start: int):
                chunk = encoded[start : start + size]
                inputs = [text_input(DOCUMENTS, chunk, [1, len(chunk)])]
                if ids is not None:
                    inputs.append(text_input(PASSAGE_IDS, ids[start : start + size], [1, len(chunk)]))
                outputs = requested(PASSAGE_IDS, PASSAGE_TOKENS, STORED_BYTES)
                result = await self._infer(self.model, inputs, outputs, params, deadline)
                shape = (1, len(chunk))
                bar.update(len(chunk))
                return (output(result, PASSAGE_IDS, shape)[0], output(result, PASSAGE_TOKENS, shape)[0],
                        output(result, STORED_BYTES, shape)[0])  # fmt: skip

            with bar:
                parts = await gather_all(send(start) for start in starts)
            return Indexed(content_ids=[pid.decode() for part in parts for pid in part[0]],
                           tokens=np.concatenate([part[1] for part in parts]),
                           stored_bytes=np.concatenate([part[2] for part in parts]))  # fmt: skip

        return await self._call(work)


class RerankClient(SyncClient):
    """The synchronous form of AsyncRerankClient (same arguments, same methods, blocking)."""

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = "kalm-reranker", **options):
        super().__init__(AsyncRerankClient, url, model, **options)

    info = blocking(AsyncRerankClient.info)
    rerank = blocking(AsyncRerankClient.rerank)
    encode_passages = blocking(AsyncRerankClient.encode_passages)
    warm = blocking(AsyncRerankClient.warm)
    index = blocking(AsyncRerankClient.index)
