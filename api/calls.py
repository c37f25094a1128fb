"""The calls every API family makes, over the project's async clients: embed texts (with the token count for
`usage`), embed them once into several precisions, and rerank candidates; and the spellings the families share
(NIM's and Cohere's `truncate`, a score's raw margin). Texts are checked here under the caller's own field name, so
that an error names `input[3]` or `documents[2]` as the request spelled it. Each call is a span of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from opentelemetry import trace
from pydantic import Field, StrictInt

from nestrank.api.catalogue import EMBEDDER, RERANKER, Catalogue, ServedModel
from nestrank.clients.rerank import RankedPassage
from nestrank.clients.tensors import encode_text, encode_texts
from nestrank.protocol.errors import ValidationError
from nestrank.protocol.parameters import BULK, INTERACTIVE, shown
from nestrank.serving.pipeline.embedder import calibration_key  # pure functions: how the server keys and quantizes
from nestrank.serving.pipeline.quantization import quantize

tracer = trace.get_tracer("nestrank.api")
# NIM's and Cohere's `truncate`: which end of an over-long text goes, or NONE to refuse it.
TRUNCATE_MODES = {"NONE": {"truncate": False}, "END": {"truncate": True, "truncation_direction": "right"},
                  "START": {"truncate": True, "truncation_direction": "left"}}  # fmt: skip

TOKEN_ID_ADVICE = (
    "token ids (int[] or int[][]) are not accepted: they are another tokenizer's ids, and embedding them would be "
    "a wrong answer. Send the texts. LangChain's OpenAIEmbeddings sends token ids by default: create it with "
    "check_embedding_ctx_length=False"
)


def texts_of(field: str, value, max_inputs: int) -> list[str]:
    """A string or a list of strings, checked; token-id lists refused with the advice above."""
    if isinstance(value, str):
        encode_text(field, value)
        return [value]
    if isinstance(value, list) and value and all(isinstance(t, (int, list)) for t in value):
        raise ValidationError(field, TOKEN_ID_ADVICE)
    if isinstance(value, list) and len(value) > max_inputs:
        raise ValidationError(field, f"{len(value)} inputs exceed the limit of {max_inputs} per request")
    encode_texts(field, value)
    return value


# `priority` on every inference route: Cohere's integer (0, the default, is served first) or a traffic class's name.
Priority = Annotated[
    StrictInt | Literal["interactive", "bulk"] | None,
    Field(
        None,
        description="0 or 'interactive' (the default): ahead of bulk work, refused at once (429 with Retry-After) "
        "when it would wait past the queue bound; 1 or more, or 'bulk': behind interactive work, waiting for room",
    ),
]


def traffic_class(priority: int | str | None) -> str | None:
    """The traffic class of a route's `priority` (None: the server's default for the call)."""
    if priority is None or isinstance(priority, str):
        return priority
    if priority < 0:
        raise ValidationError("priority", f"must be >= 0 (0 is served first), got {priority}")
    return INTERACTIVE if priority == 0 else BULK


def truncation(truncate, direction: str | None = None) -> dict:
    """Embed options for a `truncate` of true/false (nestrank's) or NONE/START/END (NIM's, Cohere's)."""
    if not isinstance(truncate, str):
        return {"truncate": truncate, "truncation_direction": direction}
    mode = TRUNCATE_MODES[truncate]
    if direction is not None and mode.get("truncation_direction", direction) != direction:
        raise ValidationError("truncation_direction", f"{direction} contradicts truncate {truncate}; send one")
    return mode


async def embed(model: ServedModel, texts: Sequence[str], options: dict, concurrency: int) -> tuple[np.ndarray, int]:
    """(vectors in the asked precision, tokens embedded). The token count runs in a worker thread while Triton
    embeds; 0 where the front has no tokenizer for the model (no repository on this host)."""
    assert model.kind == EMBEDDER
    options = {**options, "priority": traffic_class(options.get("priority"))}
    options = {k: v for k, v in options.items() if v is not None}
    attributes = {"nestrank.model": model.name, "nestrank.texts": len(texts)}
    with tracer.start_as_current_span("nestrank.embed", attributes=attributes) as span:
        if model.counter is None:
            return await model.client.embed(texts, concurrency=concurrency, **options), 0
        prompt = model.info.config.prompt_for(options.get("input_type"))  # a bad input_type raises here, first
        direction = options.get("truncation_direction", "right")
        call = model.client.embed(texts, concurrency=concurrency, **options)
        counting = asyncio.ensure_future(asyncio.to_thread(model.counter.count, texts, prompt, direction))
        try:
            vectors = await call
        except BaseException:
            counting.cancel()
            raise
        try:
            tokens = await counting
        except ValidationError:  # the server took the texts: count what it could
            tokens = 0
        span.set_attribute("nestrank.tokens", tokens)
        if model.tokens is not None:
            model.tokens.inc(tokens)
        return vectors, tokens


async def embed_precisions(model: ServedModel, texts: Sequence[str], precisions: Sequence[str], options: dict,
                           concurrency: int) -> tuple[dict[str, np.ndarray], int]:  # fmt: skip
    """Each precision of `precisions` (the model's), from ONE float32 pass: quantized here with the server's own
    function and the model's calibration ranges, so every row equals what the server sends for that precision.
    Where the calibration is not on this host (a front without --repository), int8 and uint8 cost a pass each."""
    config = model.info.config
    unserved = [p for p in precisions if p not in config.precisions]
    if unserved:
        raise ValidationError("embedding_types", f"{shown(unserved[0])} is not served by {model.name}; it serves "
                              f"{', '.join(config.precisions)}")  # fmt: skip
    vectors, tokens = await embed(model, texts, {**options, "precision": "float32", "normalize": True}, concurrency)
    key = calibration_key(vectors.shape[1], config.depth_for(options.get("layers")))
    ranges = (model.ranges or {}).get(key)
    out = {}
    for precision in dict.fromkeys(precisions):
        if precision in ("int8", "uint8") and ranges is None:
            out[precision], _ = await embed(model, texts, {**options, "precision": precision}, concurrency)
        else:
            out[precision] = quantize(vectors, precision, ranges)
    return out, tokens


async def rerank(
    model: ServedModel,
    query: str,
    documents: list[str] | None,
    passage_ids: list[str] | None,
    *,
    top_n: int | None,
    instruction: str | None,
    compression_ratio: int | None,
    documents_field: str = "documents",
    priority: int | str | None = None,
) -> list[RankedPassage]:
    """Candidates by descending margin (documents, or stored passage ids), within the model's max_candidates."""
    assert model.kind == RERANKER
    if (documents is None) == (passage_ids is None):
        raise ValidationError(documents_field, "send exactly one of documents and passage_ids")
    field, candidates = (documents_field, documents) if documents is not None else ("passage_ids", passage_ids)
    encode_texts(field, candidates)
    limit = model.info.config.max_candidates
    if len(candidates) > limit:
        raise ValidationError(field, f"{len(candidates)} candidates exceed the model's limit of {limit} per request")
    if not isinstance(query, str) or not query.strip():
        raise ValidationError("query", "empty; send the query text")
    if top_n is not None and top_n < 1:
        raise ValidationError("top_n", f"must be an integer >= 1, got {top_n}")
    kwargs = dict(top_n=top_n, instruction=instruction, compression_ratio=compression_ratio,
                  priority=traffic_class(priority))  # fmt: skip
    attributes = {"nestrank.model": model.name, "nestrank.candidates": len(candidates)}
    with tracer.start_as_current_span("nestrank.rerank", attributes=attributes):
        if documents is not None:
            return await model.client.rerank(query, documents, **kwargs)
        return await model.client.rerank(query, passages=passage_ids, **kwargs)


async def embed_model(catalogue: Catalogue, name: str | None) -> ServedModel:
    return await catalogue.model(name, EMBEDDER)


async def rerank_model(catalogue: Catalogue, name: str | None) -> ServedModel:
    return await catalogue.model(name, RERANKER)
