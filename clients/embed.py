"""Embedding clients over Triton gRPC: `AsyncEmbedClient` (asyncio) and `EmbedClient`, the same client run
synchronously.

They split any number of texts into requests within the model's batch limit (sorted by length first, so each
request pads little), send them concurrently, retry what is safe to retry across endpoints, and return the
embeddings in input order.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from nestrank.clients.base import AsyncModelClient
from nestrank.clients.chunking import split_by_length
from nestrank.clients.sync import SyncClient, blocking
from nestrank.clients.tensors import requested, text_input
from nestrank.clients.transport import DEFAULT_URL
from nestrank.protocol.embedding import (
    EMBEDDING_OUTPUTS,
    OUTPUT_DTYPES,
    TEXT,
    EmbedderConfig,
    output_width,
    parse_options,
)
from nestrank.protocol.errors import BackendError, ValidationError

DEFAULT_MODEL = "all-minilm-l6-v2"


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValidationError("texts", "expected a list of strings, got a single string")
    texts = list(texts)
    if not texts:
        raise ValidationError("texts", "no texts; send at least one")
    return texts


class AsyncEmbedClient(AsyncModelClient[EmbedderConfig]):
    """Embeddings from a served embedder (arguments: `AsyncModelClient`)."""

    config_type = EmbedderConfig
    default_model = DEFAULT_MODEL

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
        """[len(texts), dims] (packed precisions: dims/8 columns), dtype per `precision`, in input order."""
        texts = _check_texts(texts)
        info = await self.info()
        params = dict(dimensions=info.width if dimensions is None else dimensions, precision=precision,
                      normalize=normalize, truncate=truncate, truncation_direction=truncation_direction)  # fmt: skip
        if input_type is not None:
            params["input_type"] = input_type
        options = parse_options(params, info.config)  # the server's own validation, before sending
        params = {k: v for k, v in dataclasses.asdict(options).items() if v is not None}
        size = min(batch_size or info.max_batch_size or len(texts), info.max_batch_size or len(texts))
        if size < 1:
            raise ValidationError("batch_size", f"must be >= 1, got {batch_size}")
        out = np.empty((len(texts), output_width(precision, options.dimensions)), dtype=OUTPUT_DTYPES[precision])
        output = EMBEDDING_OUTPUTS[precision]
        gate = asyncio.Semaphore(max(1, concurrency or self.concurrency))
        bar = tqdm(total=len(texts), disable=not progress, unit="text")

        async def send(chunk: np.ndarray) -> None:
            inputs, wanted = [text_input(TEXT, [texts[i] for i in chunk], [len(chunk), 1])], requested(output)
            async with gate:
                result = await self._infer(self.model, inputs, wanted, params)
            rows = result.as_numpy(output)
            if rows is None or rows.shape[0] != len(chunk):
                raise BackendError(
                    f"the server returned {None if rows is None else rows.shape[0]} rows for {len(chunk)} texts"
                )
            out[chunk] = rows
            bar.update(len(chunk))

        try:
            await asyncio.gather(*(send(chunk) for chunk in split_by_length([len(t) for t in texts], size)))
        finally:
            bar.close()
        return out


class EmbedClient(SyncClient):
    """The synchronous form of AsyncEmbedClient (same arguments, same methods, blocking)."""

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = DEFAULT_MODEL, **options):
        super().__init__(AsyncEmbedClient, url, model, **options)

    info = blocking(AsyncEmbedClient.info)
    embed = blocking(AsyncEmbedClient.embed)
