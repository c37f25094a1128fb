"""NVIDIA's retriever NIM API, as its reranking NIMs speak it: `POST /v1/ranking` (`query.text`, `passages[].text`,
`truncate`; `rankings` sorted by `logit`, the score's raw yes-minus-no margin). The embedding NIMs' `input_type` and
`truncate` are served on `/v1/embeddings` (openai_routes.py), their health routes by the app (app.py).

Unknown fields are ignored. `truncate` defaults to END here (NIM's default is NONE): the reranker cuts passages and
the query where the model was trained to. NONE (refuse an over-long text) is not served yet: the gRPC client has no
such option.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from nestrank.api import calls
from nestrank.api.openai_routes import json_response
from nestrank.protocol.errors import ValidationError

router = APIRouter(tags=["NIM"])


class Text(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: StrictStr


class RankingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="a served reranker (default: the first by name)")
    query: Text
    passages: list[Text]
    truncate: Literal["NONE", "END"] = Field("END", description="END cuts passages and the query at the model's "
                                             "limits; NONE is not served")  # fmt: skip
    priority: calls.Priority


class Ranking(BaseModel):
    index: int
    logit: float


class RankingResponse(BaseModel):
    rankings: list[Ranking]


@router.post("/v1/ranking", response_model=RankingResponse, summary="Rank passages (NIM)")
async def ranking(body: RankingRequest, request: Request):
    if body.truncate == "NONE":
        raise ValidationError("truncate", "NONE is not served; the reranker cuts passages and the query at the limits "
                              "it was trained with: send END or leave it out")  # fmt: skip
    model = await calls.rerank_model(request.app.state.catalogue, body.model)
    ranked = await calls.rerank(model, body.query.text, [p.text for p in body.passages], None, top_n=None,
                                instruction=None, compression_ratio=None, documents_field="passages",
                                priority=body.priority)  # fmt: skip
    return json_response({"rankings": [{"index": r.index, "logit": r.margin} for r in ranked]})
