"""Embedding clients over Triton gRPC: sync (`EmbedClient`) and asyncio (`AsyncEmbedClient`).

Both split any number of texts into requests within the model's batch limit (sorted by length
first, so each request pads little), send them concurrently, retry what is safe to retry across
endpoints, and return the embeddings in input order.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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
from nestrank.errors import NestrankError, ValidationError
from nestrank.serving.batching import split_by_length
from nestrank.serving.embed_config import EmbedderConfig, EmbedOptions, parse_options
from nestrank.serving.quantization import OUTPUT_DTYPES, output_width

DEFAULT_MODEL = "all-minilm-l6-v2"


@dataclass(frozen=True)
class ModelInfo:
    """What the served model accepts, read from its Triton config."""

    name: str
    max_batch_size: int
    config: EmbedderConfig

    @property
    def width(self) -> int:
        return self.config.width

    @property
    def dimensions(self) -> tuple[int, ...]:
        return self.config.dimensions

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.config.precisions

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @classmethod
    def from_model_config(cls, model_config: dict) -> ModelInfo:
        name, max_batch_size, parameters = model_parameters(model_config)
        return cls(name, max_batch_size, EmbedderConfig.from_parameters(parameters))


def _options(info: ModelInfo, dimensions, precision, normalize, input_type, truncate, direction) -> EmbedOptions:
    """The server's own validation, run before sending."""
    params = {
        "dimensions": info.width if dimensions is None else dimensions,
        "precision": precision,
        "normalize": normalize,
        "truncate": truncate,
        "truncation_direction": direction,
    }
    if input_type is not None:
        params["input_type"] = input_type
    return parse_options(params, info.config)


def _request_parameters(options: EmbedOptions) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(options).items() if v is not None}


def _text_input(texts: Sequence[str], module) -> Any:
    tensor = module.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=object).reshape(-1, 1))
    return tensor


@dataclass
class _Plan:
    """Texts cut into length-sorted requests, and where each request's rows go back."""

    chunks: list[np.ndarray]
    out: np.ndarray

    @classmethod
    def make(cls, texts: Sequence[str], info: ModelInfo, options: EmbedOptions, batch_size: int | None) -> _Plan:
        limit = info.max_batch_size or len(texts)
        size = min(batch_size or limit, limit)
        if size < 1:
            raise ValidationError("batch_size", f"must be >= 1, got {batch_size}")
        width = output_width(options.precision, options.dimensions)
        out = np.empty((len(texts), width), dtype=OUTPUT_DTYPES[options.precision])
        return cls(split_by_length([len(t) for t in texts], size), out)

    def place(self, chunk: np.ndarray, rows: np.ndarray) -> None:
        if rows.shape[0] != len(chunk):
            raise NestrankError(f"server returned {rows.shape[0]} rows for {len(chunk)} texts")
        self.out[chunk] = rows


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValidationError("texts", "expected a list of strings, got a single string")
    texts = list(texts)
    if not texts:
        raise ValidationError("texts", "no texts; send at least one")
    return texts


class EmbedClient:
    """Synchronous client. `url` may be a list of endpoints: requests rotate over them and fail over."""

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        model: str = DEFAULT_MODEL,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        concurrency: int = 4,
        api_key: str | None = None,
        **tls,
    ):
        """`timeout_s` bounds each request, its retries included; `api_key` (default: $NESTRANK_API_KEY) and
        `tls` (ssl=True, root_certificates=, private_key=, certificate_chain=: PEM files) as the server needs."""
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._endpoints = Endpoints(url, retry, Credentials.from_env(api_key, **tls))
        self._call = self._endpoints.call
        self._info: ModelInfo | None = None

    def info(self) -> ModelInfo:
        if self._info is None:
            config = self._call(lambda ep, **o: ep.get_model_config(self.model, as_json=True, **o), self.timeout_s)
            self._info = ModelInfo.from_model_config(config)
        return self._info

    def embed(
        self,
        texts: Sequence[str],
        *,
        dimensions: int | None = None,
        precision: str = "float32",
        normalize: bool = True,
        input_type: str | None = None,
        truncate: bool = True,
        truncation_direction: str = "right",
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """[len(texts), dims] (packed precisions: dims/8 columns), dtype per `precision`, in input order."""
        texts = _check_texts(texts)
        info = self.info()
        options = _options(info, dimensions, precision, normalize, input_type, truncate, truncation_direction)
        plan = _Plan.make(texts, info, options, batch_size)
        params = _request_parameters(options)

        def send(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            inputs = [_text_input([texts[i] for i in chunk], grpcclient)]
            result = self._call(lambda ep, **o: ep.infer(self.model, inputs, parameters=params, **o), self.timeout_s)
            return chunk, result.as_numpy("embeddings")

        workers = max(1, concurrency or self.concurrency)
        with ThreadPoolExecutor(workers) as pool, tqdm(total=len(texts), disable=not progress, unit="text") as bar:
            for chunk, rows in pool.map(send, plan.chunks):
                plan.place(chunk, rows)
                bar.update(len(chunk))
        return plan.out

    def close(self) -> None:
        self._endpoints.close()

    def __enter__(self) -> EmbedClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncEmbedClient:
    """asyncio client on `tritonclient.grpc.aio`, same semantics as EmbedClient."""

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        model: str = DEFAULT_MODEL,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        concurrency: int = 4,
        api_key: str | None = None,
        **tls,
    ):
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._endpoints = AsyncEndpoints(url, retry, Credentials.from_env(api_key, **tls))
        self._call = self._endpoints.call
        self._info: ModelInfo | None = None

    async def info(self) -> ModelInfo:
        if self._info is None:
            config = await self._call(
                lambda ep, **o: ep.get_model_config(self.model, as_json=True, **o), self.timeout_s
            )
            self._info = ModelInfo.from_model_config(config)
        return self._info

    async def embed(
        self,
        texts: Sequence[str],
        *,
        dimensions: int | None = None,
        precision: str = "float32",
        normalize: bool = True,
        input_type: str | None = None,
        truncate: bool = True,
        truncation_direction: str = "right",
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        texts = _check_texts(texts)
        info = await self.info()
        options = _options(info, dimensions, precision, normalize, input_type, truncate, truncation_direction)
        plan = _Plan.make(texts, info, options, batch_size)
        params = _request_parameters(options)
        gate = asyncio.Semaphore(max(1, concurrency or self.concurrency))
        bar = tqdm(total=len(texts), disable=not progress, unit="text")

        async def send(chunk: np.ndarray) -> None:
            inputs = [_text_input([texts[i] for i in chunk], grpcclient_aio)]
            async with gate:
                result = await self._call(
                    lambda ep, **o: ep.infer(self.model, inputs, parameters=params, **o), self.timeout_s
                )
            plan.place(chunk, result.as_numpy("embeddings"))
            bar.update(len(chunk))

        try:
            await asyncio.gather(*(send(chunk) for chunk in plan.chunks))
        finally:
            bar.close()
        return plan.out

    async def close(self) -> None:
        await self._endpoints.close()

    async def __aenter__(self) -> AsyncEmbedClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
