"""Cohere's (and Jina's) rerank API: `POST /v1/rerank` and `POST /v2/rerank`, field for field as the `cohere` SDK
sends and reads them (`Client.rerank` → v1, `ClientV2.rerank` → v2).

Results are sorted by `relevance_score` (the reranker's probability of "yes", in [0, 1]), with `id` and `meta`.
Extensions: `instruction` (the reranker's task instruction), `compression_ratio` (the MEP ratio), and
`passage_ids`: candidates given as ids stored with `nestrank index` (or `client.index`) instead of `documents`;
`index` in the results then points into `passage_ids`.
"""

from __future__ import annotations

import math
import uuid

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from nestrank.api import calls
from nestrank.api.openai_routes import json_response
from nestrank.protocol.errors import ValidationError

router = APIRouter(tags=["Cohere / Jina"])


class RerankExtensions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instruction: StrictStr | None = Field(None, description="extension: the reranker's task instruction")
    compression_ratio: StrictInt | None = Field(None, description="extension: MEP ratio, one the model exported")
    passage_ids: list[StrictStr] | None = Field(None, description="extension: ids stored with `nestrank index`, "
                                                "instead of documents; results index into them")  # fmt: skip
    priority: calls.Priority  # Cohere v2's; an extension on v1


class RerankV1Request(RerankExtensions):
    query: StrictStr
    documents: list[StrictStr | dict[StrictStr, StrictStr]] | None = Field(
        None, description="texts, or objects whose rank_fields (default: text) are ranked"
    )
    model: StrictStr | None = Field(None, description="a served reranker (default: the first by name)")
    top_n: StrictInt | None = None
    return_documents: StrictBool = False
    rank_fields: list[StrictStr] | None = None
    max_chunks_per_doc: StrictInt | None = Field(None, description="not supported: documents are cut at the "
                                                 "model's passage limit")  # fmt: skip


class RerankV2Request(RerankExtensions):
    query: StrictStr
    documents: list[StrictStr] | None = None
    model: StrictStr | None = Field(None, description="a served reranker (default: the first by name)")
    top_n: StrictInt | None = None
    max_tokens_per_doc: StrictInt | None = Field(None, description="at least the model's passage limit (documents "
                                                 "are cut there)")  # fmt: skip


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | dict[str, str] | None = None


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits


class RerankResponse(BaseModel):
    id: str
    results: list[RerankResult]
    meta: Meta


def ranked_text(i: int, document, rank_fields: list[str] | None) -> str:
    """A document as the reranker reads it: a string as it is; an object's rank_fields (`text` by default), one
    field's value alone, several as `field: value` lines."""
    if isinstance(document, str):
        return document
    fields = rank_fields or ["text"]
    missing = [f for f in fields if f not in document]
    if missing:
        raise ValidationError(f"documents[{i}]", f"has no field {missing[0]!r:.60} (rank_fields: {fields})"[:300])
    if len(fields) == 1:
        return document[fields[0]]
    return "\n".join(f"{f}: {document[f]}" for f in fields)


def meta(version: str, candidates: int) -> dict:
    return {"api_version": {"version": version}, "billed_units": {"search_units": max(1, math.ceil(candidates / 100))}}


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True,
             summary="Rerank documents (Cohere v1, Jina)")  # fmt: skip
async def rerank_v1(body: RerankV1Request, request: Request):
    if body.max_chunks_per_doc is not None:
        raise ValidationError("max_chunks_per_doc", "not supported: documents are cut at the model's passage limit")
    if body.return_documents and body.passage_ids is not None:
        raise ValidationError("return_documents", "stored passages keep no text; send documents to get them back")
    model = await calls.rerank_model(request.app.state.catalogue, body.model)
    texts = None if body.documents is None else [ranked_text(i, d, body.rank_fields) for i, d in
                                                  enumerate(body.documents)]  # fmt: skip
    ranked = await calls.rerank(model, body.query, texts, body.passage_ids, top_n=body.top_n,
                                instruction=body.instruction, compression_ratio=body.compression_ratio,
                                priority=body.priority)  # fmt: skip
    results = []
    for r in ranked:
        result = {"index": r.index, "relevance_score": r.score}
        if body.return_documents:
            original = body.documents[r.index]
            result["document"] = {"text": original} if isinstance(original, str) else original
        results.append(result)
    count = len(texts if texts is not None else body.passage_ids)
    return json_response({"id": str(uuid.uuid4()), "results": results, "meta": meta("1", count)})


@router.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True,
             summary="Rerank documents (Cohere v2)")  # fmt: skip
async def rerank_v2(body: RerankV2Request, request: Request):
    model = await calls.rerank_model(request.app.state.catalogue, body.model)
    limit = model.info.config.max_passage_tokens
    if body.max_tokens_per_doc is not None and body.max_tokens_per_doc < limit:
        raise ValidationError(
            "max_tokens_per_doc",
            f"{body.max_tokens_per_doc} is below the model's passage limit "
            f"of {limit} tokens, where documents are cut; send at least {limit} or leave it out",
        )
    ranked = await calls.rerank(model, body.query, body.documents, body.passage_ids, top_n=body.top_n,
                                instruction=body.instruction, compression_ratio=body.compression_ratio,
                                priority=body.priority)  # fmt: skip
    results = [{"index": r.index, "relevance_score": r.score} for r in ranked]
    count = len(body.documents if body.documents is not None else body.passage_ids)
    return json_response({"id": str(uuid.uuid4()), "results": results, "meta": meta("2", count)})
