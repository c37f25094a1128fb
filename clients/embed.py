"""Embedding clients over Triton gRPC: `AsyncEmbedClient` (asyncio) and `EmbedClient`, the same client run
synchronously.

They split any number of texts into requests within the model's batch limit (sorted by length first, so each
request pads little), send them concurrently, retry what is safe to retry across endpoints, and return the
embeddings in input order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from nestrank.clients.base import AsyncModelClient, check_count, gather_all
from nestrank.clients.chunking import split_by_length
from nestrank.clients.sync import SyncClient, blocking
from nestrank.clients.tensors import encode_texts, output, requested, text_input
from nestrank.clients.transport import DEFAULT_URL
from nestrank.protocol.embedding import (
    EMBEDDING_OUTPUTS,
    OUTPUT_DTYPES,
    TEXT,
    EmbedderConfig,
    output_width,
    parse_options,
)

DEFAULT_MODEL = "all-minilm-l6-v2"


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
        layers: int | None = None,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool = False,
        priority: str | None = None,
    ) -> np.ndarray:
        """[len(texts), dims] (packed precisions: dims/8 columns), dtype per `precision`, in input order.
        `batch_size` and `concurrency` can lower the model's batch limit and the client's concurrency for this
        call. `layers`: a depth on the model's ladder (`info().served_layers`; None: the full depth). `priority`:
        "interactive" (the default) or "bulk" (embedding a corpus: behind interactive work, waiting for room)."""
        encoded = encode_texts("texts", texts)  # every bad text refused before anything is sent
        if batch_size is not None:
            check_count("batch_size", batch_size)
        if concurrency is not None:
            check_count("concurrency", concurrency)
        asked = dict(dimensions=dimensions, precision=precision, normalize=normalize, truncate=truncate,
                     truncation_direction=truncation_direction, input_type=input_type,
                     layers=layers, traffic_class=priority)  # fmt: skip

        async def work(deadline: float) -> np.ndarray:
            info = await self._model_info(deadline)
            params = {k: v for k, v in asked.items() if v is not None}
            options = parse_options(params, info.config)  # the server's own validation, before sending
            params = {k: v for k, v in dataclasses.asdict(options).items() if v is not None}
            limit = info.max_batch_size or len(encoded)
            size = min(batch_size or limit, limit)
            width = output_width(options.precision, options.dimensions)
            out = np.empty((len(encoded), width), OUTPUT_DTYPES[options.precision])
            name = EMBEDDING_OUTPUTS[options.precision]
            mine = asyncio.Semaphore(concurrency) if concurrency else contextlib.nullcontext()  # within the client's
            with tqdm(total=len(encoded), disable=not progress, unit="text") as bar:

                async def send(chunk: np.ndarray) -> None:
                    inputs = [text_input(TEXT, [encoded[i] for i in chunk], [len(chunk), 1])]
                    async with mine:
                        result = await self._infer(self.model, inputs, requested(name), params, deadline)
                    out[chunk] = output(result, name, shape=(len(chunk), width))
                    bar.update(len(chunk))

                await gather_all(send(chunk) for chunk in split_by_length([len(t) for t in encoded], size))
            return out

        return await self._call(work)


class EmbedClient(SyncClient):
    """The synchronous form of AsyncEmbedClient (same arguments, same methods, blocking)."""

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = DEFAULT_MODEL, **options):
        super().__init__(AsyncEmbedClient, url, model, **options)

    info = blocking(AsyncEmbedClient.info)
    embed = blocking(AsyncEmbedClient.embed)
