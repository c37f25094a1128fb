"""Hugging Face Text Embeddings Inference's API: `POST /embed`, `POST /rerank`, `GET /info` (`GET /health` is the
front's own, in app.py). TEI serves one model; here `/embed` and `/info` use the default embedder and `/rerank` the
default reranker (`--embed-model`, `--rerank-model`; else the first of each by name). Errors in TEI's envelope.

Differences from TEI, by design: `truncate` defaults to true (TEI's `--auto-truncate`, reported by /info), and the
reranker always cuts passages and queries where the model was trained to (KaLM's rule), on the right.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

import nestrank
from nestrank.api import calls
from nestrank.api.catalogue import EMBEDDER, RERANKER
from nestrank.api.openai_routes import json_response
from nestrank.protocol.errors import ModelNotFoundError, ValidationError

router = APIRouter(tags=["TEI"])
Direction = Literal["right", "left", "Right", "Left"]  # TEI's enum is capitalised; its docs write it lower-case
DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    normalize: StrictBool = True
    truncate: StrictBool | None = Field(None, description="default true (auto-truncate)")
    truncation_direction: Direction = "right"
    prompt_name: StrictStr | None = Field(None, description="a prompt of the model's, e.g. query")
    dimensions: StrictInt | None = None
    layers: StrictInt | None = Field(None, description="nestrank: a depth on the model's ladder (default: full)")


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = Field(False, description="the yes-minus-no logit instead of its sigmoid")
    return_text: StrictBool = False
    truncate: StrictBool | None = Field(None, description="accepted; the reranker always cuts at its limits")
    truncation_direction: Direction = "right"


class Rank(BaseModel):
    index: int
    score: float
    text: str | None = None


@router.post("/embed", response_model=list[list[float]], summary="Embeddings (TEI)")
async def embed(body: EmbedRequest, request: Request):
    settings = request.app.state.settings
    texts = calls.texts_of("inputs", body.inputs, settings.max_inputs)
    model = await calls.embed_model(request.app.state.catalogue, None)
    options = dict(dimensions=body.dimensions, normalize=body.normalize, input_type=body.prompt_name,
                   truncate=body.truncate, truncation_direction=body.truncation_direction.lower(),
                   layers=body.layers)  # fmt: skip
    vectors, _ = await calls.embed(model, texts, options, settings.request_concurrency)
    return json_response(vectors.tolist())


def logit(score: float) -> float:
    """The margin back from its sigmoid; a score of exactly 0 or 1 (float32 saturates) gives the float32 bounds."""
    p = min(max(score, 1e-38), 1 - 2**-24)
    return math.log(p) - math.log1p(-p)


@router.post("/rerank", response_model=list[Rank], response_model_exclude_none=True, summary="Rerank (TEI)")
async def rerank(body: RerankRequest, request: Request):
    if body.truncation_direction.lower() != "right":
        raise ValidationError("truncation_direction", "the reranker cuts passages on the right, as it was trained")
    model = await calls.rerank_model(request.app.state.catalogue, None)
    ranked = await calls.rerank(model, body.query, body.texts, None, top_n=None, instruction=None,
                                compression_ratio=None, documents_field="texts")  # fmt: skip
    ranks = []
    for r in ranked:
        rank = {"index": r.index, "score": logit(r.score) if body.raw_scores else r.score}
        if body.return_text:
            rank["text"] = body.texts[r.index]
        ranks.append(rank)
    return json_response(ranks)


@router.get("/info", summary="The served model (TEI)")
async def info(request: Request):
    settings, catalogue = request.app.state.settings, request.app.state.catalogue
    try:
        model = await catalogue.model(None, EMBEDDER)
    except ModelNotFoundError:
        model = await catalogue.model(None, RERANKER)
    config = model.info.config
    if model.kind == EMBEDDER:
        model_type = {"embedding": {"pooling": config.pooling}}
        max_input = config.max_length
    else:
        model_type = {"reranker": {"id2label": {"0": "LABEL"}, "label2id": {"LABEL": 0}}}
        max_input = config.max_passage_tokens
    # TEI's max_batch_tokens is the tokens one batch may hold: the model's own limit of that name where it has one
    # (the embed scheduler's), else the scorer's per-run budget.
    max_batch_tokens = getattr(config, "max_batch_tokens", None) or getattr(config, "score_batch_tokens", None)
    return json_response({
        "model_id": model.name,
        "model_sha": None,
        "model_dtype": DTYPES.get(config.weights, config.weights),
        "model_type": model_type,
        "max_concurrent_requests": settings.concurrency,
        "max_input_length": max_input,
        "max_batch_tokens": max_batch_tokens,
        "max_batch_requests": model.info.max_batch_size or None,
        "max_client_batch_size": settings.max_inputs if model.kind == EMBEDDER else config.max_candidates,
        "auto_truncate": True,
        "tokenization_workers": 1,
        "version": nestrank.__version__,
        "sha": None,
        "docker_label": None,
        "layers": list(getattr(config, "served_layers", ())) or None,  # nestrank's: the depths `layers` may ask for
        "limits": dataclasses.asdict(config.limits),  # nestrank's: every limit the model enforces, as it is served
    })  # fmt: skip
