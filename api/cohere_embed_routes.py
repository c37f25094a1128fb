"""Cohere's embed API: `POST /v1/embed` (`cohere.Client.embed`) and `POST /v2/embed` (`cohere.ClientV2.embed`), field
for field as the SDK sends and reads them.

`embedding_types` is any subset of float, int8, uint8, binary, ubinary and base64 (float32 bytes, little-endian): all
of them come from one float32 pass per text, quantized in the front with the server's own function and the model's
calibrated int8/uint8 ranges (calls.embed_precisions), so each equals what the gRPC client gets for that precision.
`input_type` search_query / search_document picks the model's query / document prompt; classification and clustering
the model's prompt of that name where it has one. `output_dimension` is one of the model's Matryoshka dimensions,
`truncate` NONE / START / END (Cohere's default END). Text only: `images` and `inputs` are refused.
"""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from nestrank.api import calls
from nestrank.api.openai_routes import encoded_rows, json_response
from nestrank.protocol.errors import ValidationError

router = APIRouter(tags=["Cohere / Jina"])
EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
PRECISION = {"float": "float32", "base64": "float32", "int8": "int8", "uint8": "uint8", "binary": "binary",
             "ubinary": "ubinary"}  # fmt: skip
InputType = Literal["search_document", "search_query", "classification", "clustering", "image"]
PROMPT_NAME = {"search_query": "query", "search_document": "document"}  # the rest: a prompt of their own name


class EmbedV1Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] | None = Field(None, description="at most 2,048 texts")
    images: list[StrictStr] | None = Field(None, description="not served: the models read text")
    model: StrictStr | None = Field(None, description="a served embedder (default: the first by name)")
    input_type: InputType | None = None
    embedding_types: list[EmbeddingType] | None = Field(None, description="default: float")
    truncate: Literal["NONE", "START", "END"] | None = Field(None, description="default END (null too, as "
                                                             "langchain-cohere sends it)")  # fmt: skip
    priority: calls.Priority  # Cohere v2's; an extension on v1


class EmbedV2Request(EmbedV1Request):
    inputs: list[dict] | None = Field(None, description="not served: send texts")
    output_dimension: StrictInt | None = Field(None, description="one of the model's Matryoshka dimensions")
    max_tokens: StrictInt | None = Field(None, description="at least the model's max length (texts are cut there)")


def prompt_name(model, input_type: str | None) -> str | None:
    if input_type == "image":
        raise ValidationError("input_type", "image is not served; nestrank's embedders read text")
    if input_type in PROMPT_NAME:
        return PROMPT_NAME[input_type]
    return input_type if input_type in dict(model.info.config.prompts) else None


async def embeddings_by_type(body: EmbedV1Request, request: Request, dimensions: int | None = None):
    """(the embeddings object, the texts, the tokens embedded)."""
    for field in ("images", "inputs"):
        if getattr(body, field, None) is not None:
            raise ValidationError(field, "not served; nestrank's embedders read text: send texts")
    if body.texts is None:
        raise ValidationError("texts", "missing; send the texts to embed")
    settings = request.app.state.settings
    texts = calls.texts_of("texts", body.texts, settings.max_inputs)
    model = await calls.embed_model(request.app.state.catalogue, body.model)
    types = list(dict.fromkeys(body.embedding_types or ["float"]))
    options = dict(dimensions=dimensions, input_type=prompt_name(model, body.input_type), priority=body.priority,
                   **calls.truncation(body.truncate or "END"))  # fmt: skip
    by_precision, tokens = await calls.embed_precisions(model, texts, [PRECISION[t] for t in types], options,
                                                        settings.request_concurrency)  # fmt: skip
    embeddings = {t: encoded_rows(by_precision[PRECISION[t]], "base64" if t == "base64" else "float") for t in types}
    return embeddings, texts, tokens


def meta(version: str, tokens: int) -> dict:
    return {"api_version": {"version": version}, "billed_units": {"input_tokens": tokens}}


@router.post("/v1/embed", summary="Embed texts (Cohere v1)")
async def embed_v1(body: EmbedV1Request, request: Request):
    embeddings, texts, tokens = await embeddings_by_type(body, request)
    answer = {"id": str(uuid.uuid4()), "texts": texts, "meta": meta("1", tokens)}
    if body.embedding_types is None:  # the v1 SDK's default: a plain list of floats
        return json_response({**answer, "response_type": "embeddings_floats", "embeddings": embeddings["float"]})
    return json_response({**answer, "response_type": "embeddings_by_type", "embeddings": embeddings})


@router.post("/v2/embed", summary="Embed texts (Cohere v2)")
async def embed_v2(body: EmbedV2Request, request: Request):
    if body.max_tokens is not None:
        model = await calls.embed_model(request.app.state.catalogue, body.model)
        limit = model.info.config.max_length
        if body.max_tokens < limit:
            raise ValidationError("max_tokens", f"{body.max_tokens} is below the model's max length of {limit} "
                                  f"tokens, where texts are cut; send at least {limit} or leave it out")  # fmt: skip
    embeddings, texts, tokens = await embeddings_by_type(body, request, body.output_dimension)
    return json_response({"id": str(uuid.uuid4()), "response_type": "embeddings_by_type", "embeddings": embeddings,
                          "texts": texts, "meta": meta("2", tokens)})  # fmt: skip
