"""FBNL rerank clients: pre-encode passages once (index time), rerank them for every later query.

Three ways to name candidates: `documents` (texts; the server encodes only what its passage-state
cache misses), `passages=PassageStates` (states you keep beside your documents), or `passages=[ids]`
(ids of passages the server has cached, e.g. by `warm`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tqdm.auto import tqdm

from nestrank.clients.transport import (
    DEFAULT_URL,
    AsyncEndpoints,
    Credentials,
    Endpoints,
    RetryPolicy,
    model_parameters,
)
from nestrank.errors import ValidationError
from nestrank.serving.batching import split_by_length
from nestrank.serving.passage_cache import passage_id
from nestrank.serving.rerank_config import RerankerConfig, parse_rerank_options

ENCODE_BATCH = 32


@dataclass(frozen=True)
class PassageStates:
    """Pooled passage states, ragged: passage i is states[offsets[i]:offsets[i+1]] (float16) with its
    per-group token counts. Keep them with your documents (`save`/`load`) and rerank without re-encoding."""

    states: np.ndarray  # [sum of groups, H] float16
    counts: np.ndarray  # [sum of groups] int32
    offsets: np.ndarray  # [N + 1] int64
    ratio: int
    ids: tuple[str, ...]  # content hashes, as the server computes them

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def padded(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """[n, G, H] float16 and [n, G] int32 for the wire (zero counts mark padding)."""
        sizes = [int(self.offsets[i + 1] - self.offsets[i]) for i in indices]
        states = np.zeros((len(sizes), max(sizes), self.states.shape[1]), dtype=np.float16)
        counts = np.zeros((len(sizes), max(sizes)), dtype=np.int32)
        for row, (i, size) in enumerate(zip(indices, sizes)):
            start = self.offsets[i]
            states[row, :size] = self.states[start : start + size]
            counts[row, :size] = self.counts[start : start + size]
        return states, counts

    @classmethod
    def from_padded(cls, states: np.ndarray, counts: np.ndarray, ratio: int, ids: Sequence[str]) -> PassageStates:
        sizes = [int(np.flatnonzero(c > 0)[-1]) + 1 if (c > 0).any() else 0 for c in counts]
        flat_states = np.concatenate([s[:n] for s, n in zip(states, sizes)]).astype(np.float16)
        flat_counts = np.concatenate([c[:n] for c, n in zip(counts, sizes)]).astype(np.int32)
        return cls(
            flat_states, flat_counts, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), ratio, tuple(ids)
        )

    @classmethod
    def concat(cls, parts: Sequence[PassageStates]) -> PassageStates:
        if len({p.ratio for p in parts}) != 1:
            raise ValueError("cannot concatenate states of different ratios")
        offsets = [0]
        for p in parts:
            offsets += list(offsets[-1] + p.offsets[1:])
        return cls(
            np.concatenate([p.states for p in parts]),
            np.concatenate([p.counts for p in parts]),
            np.asarray(offsets, dtype=np.int64),
            parts[0].ratio,
            tuple(i for p in parts for i in p.ids),
        )

    def subset(self, indices: Sequence[int]) -> PassageStates:
        states, counts = self.padded(indices)
        return PassageStates.from_padded(states, counts, self.ratio, [self.ids[i] for i in indices])

    def save(self, path: str | Path) -> None:
        np.savez(path, states=self.states, counts=self.counts, offsets=self.offsets, ratio=self.ratio,
                 ids=np.array(self.ids))  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> PassageStates:
        with np.load(path) as f:
            return cls(f["states"], f["counts"], f["offsets"], int(f["ratio"]), tuple(str(i) for i in f["ids"]))


@dataclass(frozen=True)
class RankedPassage:
    index: int  # into the candidates you sent
    score: float
    passage_id: str
    document: str | None = None


def _bytes_input(module, name: str, values: Sequence[str], shape: list[int] | None = None):
    tensor = module.InferInput(name, shape or [len(values)], "BYTES")
    array = np.array([v.encode("utf-8") for v in values], dtype=object)
    tensor.set_data_from_numpy(array.reshape(shape) if shape else array)
    return tensor


def _array_input(module, name: str, array: np.ndarray, datatype: str):
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@dataclass(frozen=True)
class _RerankPlan:
    """Candidates cut into requests within the server's max_candidates; scores are pointwise, so merging
    the parts by score is exact."""

    chunks: list[np.ndarray]
    params: dict

    @classmethod
    def make(cls, config: RerankerConfig, count: int, passages, **options) -> _RerankPlan:
        if count == 0:
            raise ValidationError("documents", "no candidates; send at least one")
        params = {k: v for k, v in options.items() if v is not None}
        if isinstance(passages, PassageStates):
            params["states_ratio"] = passages.ratio
            params.setdefault("compression_ratio", passages.ratio)
        parse_rerank_options(params, config)  # the server's rules, before sending
        size = config.max_candidates
        return cls([np.arange(s, min(s + size, count)) for s in range(0, count, size)], params)

    def inputs(self, module, query: str, chunk: np.ndarray, documents, passages) -> list:
        """One request's tensors, each with the leading batch dimension of 1 the rerank model takes."""
        inputs = [_bytes_input(module, "query", [query], [1, 1])]
        if documents is not None:
            inputs.append(_bytes_input(module, "documents", [documents[i] for i in chunk], [1, len(chunk)]))
        elif isinstance(passages, PassageStates):
            states, counts = passages.padded(chunk)
            inputs += [_array_input(module, "passage_states", states[None], "FP16"),
                       _array_input(module, "passage_counts", counts[None], "INT32")]  # fmt: skip
        else:
            inputs.append(_bytes_input(module, "passage_ids", [passages[i] for i in chunk], [1, len(chunk)]))
        return inputs

    @staticmethod
    def merge(parts: list[tuple[np.ndarray, object]], top_n: int | None, documents) -> list[RankedPassage]:
        ranked = []
        for chunk, result in parts:
            ids = result.as_numpy("passage_ids")[0]
            for idx, score, pid in zip(result.as_numpy("indices")[0], result.as_numpy("scores")[0], ids):
                index = int(chunk[idx])
                doc = documents[index] if documents is not None else None
                ranked.append(RankedPassage(index, float(score), pid.decode(), doc))
        ranked.sort(key=lambda r: (-r.score, r.index))
        return ranked[:top_n] if top_n else ranked


def _check_candidates(documents, passages) -> int:
    if (documents is None) == (passages is None):
        raise ValidationError("documents", "pass exactly one of documents= or passages=")
    if isinstance(documents, str) or isinstance(passages, str):
        raise ValidationError("documents", "expected a list, got a single string")
    return len(documents if documents is not None else passages)


class RerankClient:
    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = "kalm-reranker", *,
                 timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(), concurrency: int = 4,
                 api_key: str | None = None, **tls):  # fmt: skip
        """`timeout_s` bounds each request, its retries included; `api_key` (default: $NESTRANK_API_KEY) and
        `tls` (ssl=True, root_certificates=, private_key=, certificate_chain=: PEM files) as the server needs."""
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._endpoints = Endpoints(url, retry, Credentials.from_env(api_key, **tls))
        self._config: RerankerConfig | None = None

    def info(self) -> RerankerConfig:
        if self._config is None:
            config = self._endpoints.call(lambda c, **o: c.get_model_config(self.model, as_json=True, **o),
                                          self.timeout_s)  # fmt: skip
            self._config = RerankerConfig.from_parameters(model_parameters(config)[2])
        return self._config

    def _infer(self, model: str, inputs: list, params: dict):
        return self._endpoints.call(lambda c, **o: c.infer(model, inputs, parameters=params, **o), self.timeout_s)

    def rerank(self, query: str, documents: Sequence[str] | None = None, *, passages=None,
               instruction: str | None = None, top_n: int | None = None, compression_ratio: int | None = None,
               return_documents: bool = False) -> list[RankedPassage]:  # fmt: skip
        """Candidates by descending score; `index` points into what you sent."""
        count = _check_candidates(documents, passages)
        plan = _RerankPlan.make(self.info(), count, passages, instruction=instruction, top_n=top_n,
                                compression_ratio=compression_ratio)  # fmt: skip
        parts = [(chunk, self._infer(self.model, plan.inputs(grpcclient, query, chunk, documents, passages),
                                     plan.params)) for chunk in plan.chunks]  # fmt: skip
        ranked = _RerankPlan.merge(parts, top_n, documents if return_documents else None)
        return ranked

    def encode_passages(self, documents: Sequence[str], *, compression_ratio: int | None = None,
                        progress: bool = False) -> PassageStates:  # fmt: skip
        """Pooled states for your documents, to keep and reuse (the query plays no part)."""
        documents = list(documents)
        if not documents:
            raise ValidationError("documents", "nothing to encode; send at least one document")
        ratio = compression_ratio or self.info().default_ratio
        parse_rerank_options({"compression_ratio": ratio}, self.info())
        chunks = split_by_length([len(d) for d in documents], ENCODE_BATCH)

        def send(chunk):
            texts = [documents[i] for i in chunk]
            inputs = [_bytes_input(grpcclient, "documents", texts, [len(texts), 1])]
            result = self._infer(f"{self.model}_encode", inputs, {"compression_ratio": ratio})
            ids = [passage_id(t) for t in texts]
            return PassageStates.from_padded(result.as_numpy("passage_states"), result.as_numpy("passage_counts"),
                                             ratio, ids)  # fmt: skip

        parts = [None] * len(chunks)
        with ThreadPoolExecutor(self.concurrency) as pool, tqdm(total=len(documents), disable=not progress) as bar:
            for i, part in enumerate(pool.map(send, chunks)):
                parts[i] = part
                bar.update(len(part))
        order = np.argsort(np.concatenate(chunks), kind="stable")  # back to input order
        return PassageStates.concat(parts).subset(order)

    def warm(self, documents: Sequence[str], *, compression_ratio: int | None = None) -> list[str]:
        """Encode into the server's passage-state cache; returns the ids to rerank by."""
        ids = []
        for start in range(0, len(documents), ENCODE_BATCH):
            texts = list(documents[start : start + ENCODE_BATCH])
            params = {"warm": True, **({"compression_ratio": compression_ratio} if compression_ratio else {})}
            result = self._infer(self.model, [_bytes_input(grpcclient, "documents", texts, [1, len(texts)])], params)
            ids += [i.decode() for i in result.as_numpy("passage_ids")[0]]
        return ids

    def close(self) -> None:
        self._endpoints.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRerankClient:
    """asyncio twin of RerankClient (rerank, warm, info); split candidate lists go out concurrently."""

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = "kalm-reranker", *,
                 timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(), api_key: str | None = None,
                 **tls):  # fmt: skip
        self.model = model
        self.timeout_s = timeout_s
        self._endpoints = AsyncEndpoints(url, retry, Credentials.from_env(api_key, **tls))
        self._config: RerankerConfig | None = None

    async def info(self) -> RerankerConfig:
        if self._config is None:
            config = await self._endpoints.call(lambda c, **o: c.get_model_config(self.model, as_json=True, **o),
                                                self.timeout_s)  # fmt: skip
            self._config = RerankerConfig.from_parameters(model_parameters(config)[2])
        return self._config

    async def rerank(self, query: str, documents: Sequence[str] | None = None, *, passages=None,
                     instruction: str | None = None, top_n: int | None = None, compression_ratio: int | None = None,
                     return_documents: bool = False) -> list[RankedPassage]:  # fmt: skip
        count = _check_candidates(documents, passages)
        plan = _RerankPlan.make(await self.info(), count, passages, instruction=instruction, top_n=top_n,
                                compression_ratio=compression_ratio)  # fmt: skip

        async def send(chunk):
            inputs = plan.inputs(grpcclient_aio, query, chunk, documents, passages)
            result = await self._endpoints.call(
                lambda c, **o: c.infer(self.model, inputs, parameters=plan.params, **o), self.timeout_s
            )
            return chunk, result

        parts = await asyncio.gather(*(send(chunk) for chunk in plan.chunks))
        return _RerankPlan.merge(list(parts), top_n, documents if return_documents else None)

    async def warm(self, documents: Sequence[str], *, compression_ratio: int | None = None) -> list[str]:
        params = {"warm": True, **({"compression_ratio": compression_ratio} if compression_ratio else {})}
        inputs = [_bytes_input(grpcclient_aio, "documents", list(documents), [1, len(documents)])]
        result = await self._endpoints.call(lambda c, **o: c.infer(self.model, inputs, parameters=params, **o),
                                            self.timeout_s)  # fmt: skip
        return [i.decode() for i in result.as_numpy("passage_ids")[0]]

    async def close(self) -> None:
        await self._endpoints.close()

    async def __aenter__(self) -> AsyncRerankClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
