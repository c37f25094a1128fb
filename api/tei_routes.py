"""Hugging Face Text Embeddings Inference's API, route for route as TEI's router serves it: `POST /embed`,
`/rerank`, `/similarity`, `/tokenize`, `/decode`, `GET /info`; `POST /` and `/invocations` (SageMaker), which TEI
points at its one model's task and which here answer by the body's shape (`inputs` → embed, `query` + `texts` →
rerank, `inputs.source_sentence` → similarity); `/embed_all`, `/embed_sparse` and `/predict`, which need outputs these
models do not have, answer 424 saying so. `GET /health`, `/ping`, `GET /` and `/metrics` are the app's (app.py);
`/embeddings` is the OpenAI route (openai_routes.py), as in TEI.

TEI serves one model; here the embed routes use the default embedder and the rerank route the default reranker
(`--embed-model`, `--rerank-model`; else the first of each by name). Unknown fields are ignored, as TEI ignores them.
Errors in TEI's envelope and with TEI's statuses (the error table's TEI columns: 413 for a bad request).

Differences from TEI, by design: `truncate` defaults to true (TEI's `--auto-truncate`, reported by /info), token ids
as `inputs` are refused (the Triton models read text), and the reranker always cuts passages and queries where the
model was trained to (KaLM's rule), on the right.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Literal

import numpy as np
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic import ValidationError as PydanticError

import nestrank
from nestrank.api import calls
from nestrank.api.catalogue import EMBEDDER, RERANKER, ServedModel
from nestrank.api.errors import validation_error
from nestrank.api.openai_routes import json_response
from nestrank.protocol.errors import ModelNotFoundError, UnsupportedError, ValidationError

router = APIRouter(tags=["TEI"])
Direction = Literal["right", "left", "Right", "Left"]  # TEI's enum is capitalised; its docs write it lower-case
DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}
IGNORE_UNKNOWN = ConfigDict(extra="ignore")  # serde's default, and so TEI's


class EmbedRequest(BaseModel):
    model_config = IGNORE_UNKNOWN

    inputs: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    normalize: StrictBool = True
    truncate: StrictBool | None = Field(None, description="default true (auto-truncate)")
    truncation_direction: Direction = "right"
    prompt_name: StrictStr | None = Field(None, description="a prompt of the model's, e.g. query")
    dimensions: StrictInt | None = None
    layers: StrictInt | None = Field(None, description="nestrank: a depth on the model's ladder (default: full)")
    priority: calls.Priority


class RerankRequest(BaseModel):
    model_config = IGNORE_UNKNOWN

    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = Field(False, description="the yes-minus-no logit instead of its sigmoid")
    return_text: StrictBool = False
    truncate: StrictBool | None = Field(None, description="accepted; the reranker always cuts at its limits")
    truncation_direction: Direction = "right"
    priority: calls.Priority


class SimilarityInputs(BaseModel):
    model_config = IGNORE_UNKNOWN

    source_sentence: StrictStr
    sentences: list[StrictStr]


class SimilarityParameters(BaseModel):
    model_config = IGNORE_UNKNOWN

    truncate: StrictBool | None = None
    truncation_direction: Direction = "right"
    prompt_name: StrictStr | None = None


class SimilarityRequest(BaseModel):
    model_config = IGNORE_UNKNOWN

    inputs: SimilarityInputs
    parameters: SimilarityParameters | None = None


class TokenizeRequest(BaseModel):
    model_config = IGNORE_UNKNOWN

    inputs: StrictStr | list[StrictStr]
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = None


class DecodeRequest(BaseModel):
    model_config = IGNORE_UNKNOWN

    ids: list[StrictInt] | list[list[StrictInt]]
    skip_special_tokens: StrictBool = True


class Rank(BaseModel):
    index: int
    score: float
    text: str | None = None


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


async def embed_vectors(request: Request, texts: list[str], options: dict) -> np.ndarray:
    settings = request.app.state.settings
    model = await calls.embed_model(request.app.state.catalogue, None)
    vectors, _ = await calls.embed(model, texts, options, settings.request_concurrency)
    return vectors


@router.post("/embed", response_model=list[list[float]], summary="Embeddings (TEI)")
async def embed(body: EmbedRequest, request: Request):
    texts = calls.texts_of("inputs", body.inputs, request.app.state.settings.max_inputs)
    options = dict(dimensions=body.dimensions, normalize=body.normalize, input_type=body.prompt_name,
                   truncate=body.truncate, truncation_direction=body.truncation_direction.lower(),
                   layers=body.layers, priority=body.priority)  # fmt: skip
    return json_response((await embed_vectors(request, texts, options)).tolist())


@router.post("/rerank", response_model=list[Rank], response_model_exclude_none=True, summary="Rerank (TEI)")
async def rerank(body: RerankRequest, request: Request):
    if body.truncation_direction.lower() != "right":
        raise ValidationError("truncation_direction", "the reranker cuts passages on the right, as it was trained")
    model = await calls.rerank_model(request.app.state.catalogue, None)
    ranked = await calls.rerank(model, body.query, body.texts, None, top_n=None, instruction=None,
                                compression_ratio=None, documents_field="texts", priority=body.priority)  # fmt: skip
    ranks = []
    for r in ranked:
        rank = {"index": r.index, "score": r.margin if body.raw_scores else r.score}
        if body.return_text:
            rank["text"] = body.texts[r.index]
        ranks.append(rank)
    return json_response(ranks)


@router.post("/similarity", response_model=list[float], summary="Cosine of each sentence to the source (TEI)")
async def similarity(body: SimilarityRequest, request: Request):
    p = body.parameters or SimilarityParameters()
    texts = calls.texts_of("inputs.sentences", body.inputs.sentences, request.app.state.settings.max_inputs - 1)
    calls.texts_of("inputs.source_sentence", body.inputs.source_sentence, 1)
    options = dict(input_type=p.prompt_name, truncate=p.truncate, truncation_direction=p.truncation_direction.lower())
    vectors = await embed_vectors(request, [body.inputs.source_sentence, *texts], options)  # normalised: dots
    return json_response((vectors[1:] @ vectors[0]).tolist())


@router.post("/", summary="TEI's root route: embed, rerank or similarity, by the body's shape")
async def root(request: Request, body: dict = Body(..., description="the body of /embed, /rerank or /similarity")):
    """TEI answers `POST /` with its one model's task; this front serves both kinds, so the body says which."""
    if "query" in body and "texts" in body:
        return await rerank(parsed(RerankRequest, body), request)
    if isinstance(body.get("inputs"), dict):
        return await similarity(parsed(SimilarityRequest, body), request)
    if "inputs" in body:
        return await embed(parsed(EmbedRequest, body), request)
    raise ValidationError("body", "send an /embed body {inputs}, a /rerank body {query, texts} or a /similarity body "
                          "{inputs: {source_sentence, sentences}}")  # fmt: skip


router.add_api_route("/invocations", root, methods=["POST"], summary="SageMaker's route: as POST / (TEI)")


def parsed(model: type[BaseModel], body: dict) -> BaseModel:
    try:
        return model.model_validate(body)
    except PydanticError as err:
        raise validation_error(err.errors()) from None


async def tokenizer_of(request: Request) -> ServedModel:
    model = await calls.embed_model(request.app.state.catalogue, None)
    if model.counter is None:
        raise UnsupportedError(f"{model.name}: the front has no tokenizer for it (it reads tokenizers from the "
                               "model repository: run it with --repository, as `nestrank serve` does)")  # fmt: skip
    return model


@router.post("/tokenize", response_model=list[list[SimpleToken]], summary="The embedder's tokens (TEI)")
async def tokenize(body: TokenizeRequest, request: Request):
    texts = calls.texts_of("inputs", body.inputs, request.app.state.settings.max_inputs)
    model = await tokenizer_of(request)
    prompt = model.info.config.prompt_for(body.prompt_name)

    def tokens() -> list[list[dict]]:
        # TEI's answer: offsets in bytes of the text (the prompt included); special tokens carry no offsets.
        out = []
        for text in texts:
            text = prompt + text
            encoding = model.counter.whole.encode(text, add_special_tokens=body.add_special_tokens)
            row = []
            for token_id, token, (start, stop), special in zip(encoding.ids, encoding.tokens, encoding.offsets,
                                                                encoding.special_tokens_mask):  # fmt: skip
                if special:
                    row.append({"id": token_id, "text": token, "special": True, "start": None, "stop": None})
                else:
                    start_byte = len(text[:start].encode())
                    piece = text[start:stop]
                    row.append({"id": token_id, "text": piece, "special": False, "start": start_byte,
                                "stop": start_byte + len(piece.encode())})  # fmt: skip
            out.append(row)
        return out

    return json_response(await asyncio.to_thread(tokens))


@router.post("/decode", response_model=list[str], summary="Token ids back to text (TEI)")
async def decode(body: DecodeRequest, request: Request):
    batch = body.ids if body.ids and isinstance(body.ids[0], list) else [body.ids]
    if not batch or not all(batch):
        raise ValidationError("ids", "empty; send token ids")
    if len(batch) > request.app.state.settings.max_inputs:
        raise ValidationError(
            "ids", f"{len(batch)} sequences exceed the limit of {request.app.state.settings.max_inputs}"
        )
    model = await tokenizer_of(request)
    vocabulary = model.counter.whole.get_vocab_size()
    for i, ids in enumerate(batch):
        bad = next((t for t in ids if not 0 <= t < vocabulary), None)
        if bad is not None:
            raise ValidationError(f"ids[{i}]", f"{bad} is not a token id of {model.name} (0..{vocabulary - 1})")
    texts = await asyncio.to_thread(
        model.counter.whole.decode_batch, batch, skip_special_tokens=body.skip_special_tokens
    )
    return json_response(texts)


NOT_SERVED = {
    "/embed_all": "token embeddings are not an output of nestrank's embedders (pooling runs inside the graph); use "
                  "/embed for pooled ones",
    "/embed_sparse": "nestrank's embedders are dense (mean, CLS or last-token pooling), not SPLADE; use /embed",
    "/predict": "nestrank serves embedders and rerankers, not sequence classifiers; use /rerank for query-text "
                "pairs",
}  # fmt: skip


def not_served(path: str):
    async def refuse(request: Request):
        raise UnsupportedError(f"{path}: {NOT_SERVED[path]}")

    return refuse


for _path in NOT_SERVED:
    router.add_api_route(_path, not_served(_path), methods=["POST"], summary="Not served here: answers 424 saying why",
                         responses={424: {"description": NOT_SERVED[_path]}})  # fmt: skip


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
