"""The two calls every API family makes, over the project's async clients: embed texts (with the token count for
`usage`) and rerank candidates. Texts are checked here under the caller's own field name, so that an error names
`input[3]` or `documents[2]` as the request spelled it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from nestrank.api.catalogue import EMBEDDER, RERANKER, Catalogue, ServedModel
from nestrank.clients.rerank import RankedPassage
from nestrank.clients.tensors import encode_text, encode_texts
from nestrank.protocol.errors import ValidationError

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


async def embed(model: ServedModel, texts: Sequence[str], options: dict, concurrency: int) -> tuple[np.ndarray, int]:
    """(vectors in the asked precision, tokens embedded). The token count runs in a worker thread while Triton
    embeds; 0 where the front has no tokenizer for the model (no repository on this host)."""
    assert model.kind == EMBEDDER
    options = {k: v for k, v in options.items() if v is not None}
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
        return vectors, await counting
    except ValidationError:  # the server took the texts: count what it could
        return vectors, 0


async def rerank(model: ServedModel, query: str, documents: list[str] | None, passage_ids: list[str] | None, *,
                 top_n: int | None, instruction: str | None, compression_ratio: int | None,
                 documents_field: str = "documents") -> list[RankedPassage]:  # fmt: skip
    """Candidates by descending score (documents, or stored passage ids), within the model's max_candidates."""
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
    kwargs = dict(top_n=top_n, instruction=instruction, compression_ratio=compression_ratio)
    if documents is not None:
        return await model.client.rerank(query, documents, **kwargs)
    return await model.client.rerank(query, passages=passage_ids, **kwargs)


async def embed_model(catalogue: Catalogue, name: str | None) -> ServedModel:
    return await catalogue.model(name, EMBEDDER)


async def rerank_model(catalogue: Catalogue, name: str | None) -> ServedModel:
    return await catalogue.model(name, RERANKER)
