"""OpenAI's embeddings API: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{model}`.

Field for field as the `openai` SDK sends and reads them. The SDK asks for `encoding_format: "base64"` unless told
otherwise and decodes it as little-endian float32 with numpy. NVIDIA's retriever NIMs speak the same route with two
more fields, both served: `input_type` (query | passage: the model's prompt) and `truncate` (NONE refuses over-long
texts, END cuts their end, START their start). TEI serves it as `/embeddings` too, and so does this front.
Extensions (extra body fields, `extra_body=` in the SDK): `precision` (one of the model's; int8/uint8/binary/ubinary
come back as base64 of their bytes, or as integer lists with `"float"`; float16 as its 2-byte little-endian values in
base64), `truncate` true/false, `truncation_direction` (right | left), `layers` (a depth on the model's ladder).
"""

from __future__ import annotations

import base64
import json
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from nestrank.api import calls
from nestrank.api.catalogue import Catalogue
from nestrank.protocol.errors import ModelNotFoundError

router = APIRouter(tags=["OpenAI"])
LITTLE_ENDIAN = {np.dtype(np.float32): "<f4", np.dtype(np.float16): "<f2"}


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] = Field(
        description="a text or a list of texts (at most 2,048); token ids are refused with a 400"
    )
    model: StrictStr = Field(description="a served embedder (GET /v1/models)")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, description="one of the model's Matryoshka dimensions")
    user: StrictStr | None = None
    precision: StrictStr | None = Field(None, description="extension: float32 (default), float16, int8, uint8, "
                                        "binary, ubinary, as the model serves them")  # fmt: skip
    input_type: StrictStr | None = Field(None, description="NIM: query or passage (the model's prompt)")
    truncate: StrictBool | Literal["NONE", "START", "END"] | None = Field(
        None, description="NIM: NONE refuses texts over the max length, END (the default) or START cuts that end; "
        "nestrank's true/false as END/NONE"
    )  # fmt: skip
    truncation_direction: Literal["right", "left"] | None = Field(None, description="extension")
    layers: StrictInt | None = Field(None, description="extension: a depth on the model's ladder (default: full)")
    priority: calls.Priority


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "nestrank"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def json_response(payload) -> Response:
    # Built here, not by FastAPI's encoder: a 2,048 x 384 response would spend longer there than in the model.
    return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")


def encoded_rows(vectors: np.ndarray, encoding_format: str) -> list:
    if encoding_format == "float":
        return vectors.tolist()
    wire = vectors.astype(LITTLE_ENDIAN.get(vectors.dtype, vectors.dtype), copy=False)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in wire]


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, summary="Create embeddings (OpenAI)")
async def create_embeddings(body: EmbeddingsRequest, request: Request):
    settings = request.app.state.settings
    texts = calls.texts_of("input", body.input, settings.max_inputs)
    model = await calls.embed_model(request.app.state.catalogue, body.model)
    options = dict(dimensions=body.dimensions, precision=body.precision, input_type=body.input_type,
                   layers=body.layers, priority=body.priority,
                   **calls.truncation(body.truncate, body.truncation_direction))  # fmt: skip
    vectors, tokens = await calls.embed(model, texts, options, settings.request_concurrency)
    rows = encoded_rows(vectors, body.encoding_format)
    return json_response({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": model.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })  # fmt: skip


router.add_api_route("/embeddings", create_embeddings, methods=["POST"], response_model=EmbeddingsResponse,
                     summary="Create embeddings (TEI's alias of the OpenAI route)")  # fmt: skip


def card(model) -> dict:
    return {"id": model.name, "object": "model", "created": model.created, "owned_by": "nestrank"}


@router.get("/v1/models", response_model=ModelList, summary="List the served models (OpenAI)")
async def list_models(request: Request):
    catalogue: Catalogue = request.app.state.catalogue
    return json_response({"object": "list", "data": [card(m) for m in await catalogue.served()]})


@router.get("/v1/models/{model}", response_model=ModelCard, summary="One served model (OpenAI)")
async def retrieve_model(model: str, request: Request):
    catalogue: Catalogue = request.app.state.catalogue
    found = await catalogue.get(model)
    if found is None:
        raise ModelNotFoundError(f"model: no model {model!r:.80} is served here")
    return json_response(card(found))
