"""HTTP routes: embeddings, models, health."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ember.api.auth import require_api_key
from ember.api.compute import ClientGone, before, compute_vectors, loaded_by
from ember.api.content_coding import codings, decode
from ember.api.encoding import embeddings_body
from ember.api.errors import validation_message
from ember.api.inputs import prepare_inputs
from ember.api.json_body import parse_json_body
from ember.api.protocol import (
    CreateEmbeddingResponse,
    EmbeddingRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from ember.api.state import AppState, app_state
from ember.errors import (
    DimensionsNotSupported,
    InvalidRequest,
    ModelNotEmbedding,
    PayloadTooLarge,
)
from ember.models.registry import RegisteredModel
from ember.pooling import shorten

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse}
    for status in (400, 401, 403, 404, 408, 413, 415, 429, 501, 503)
}

EMBEDDINGS_PATH = "/v1/embeddings"
# Compressed bodies up to this size are inflated on the event loop: cheaper than a thread hop.
INLINE_DECODE_BYTES = 64 * 1024
# Undocumented aliases. With a trailing slash: answered, not redirected (the 307 came without a
# body, and a client that does not follow redirects, httpx's default, got nothing). Without /v1
# (here and for /models), as llama.cpp's server answers: for a client whose base URL lacks it.
EMBEDDINGS_ALIASES = ("/v1/embeddings/", "/embeddings", "/embeddings/")

public = APIRouter()
protected = APIRouter(dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)


@public.get("/health")
async def health() -> dict[str, str]:
    """Liveness, without authentication."""
    return {"status": "ok"}


# HEAD too, as some health checkers send; one documented operation.
public.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)


@protected.post(
    EMBEDDINGS_PATH,
    response_model=CreateEmbeddingResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingRequest"}}
            },
        }
    },
)
async def create_embeddings(request: Request) -> Response:
    """Creates an embedding vector for each input, in input order."""
    state = app_state(request)
    try:
        body = await _parse_body(request, state)
    except ClientDisconnect:  # hung up while sending: as gone as during the compute below
        return Response(status_code=499)
    entry = state.registry.find(body.model)
    if entry.settings is not None and not entry.settings.embedding:
        raise ModelNotEmbedding("Model does not support embeddings", entry.model_id)
    deadline = asyncio.get_running_loop().time() + state.settings.request_timeout
    with state.registry.in_use(entry):
        try:
            model = await loaded_by(request, state, entry, deadline)
        except ClientGone:
            return Response(status_code=499)  # left while the model loaded; the load goes on
        settings = model.settings
        if body.dimensions is not None:
            _check_dimensions(
                body.dimensions, settings.dimensions, settings.matryoshka_dimensions, settings.id
            )
        prepared = await before(
            deadline,
            state,
            prepare_inputs(
                body.input,
                model,
                state.settings,
                truncate=body.truncate,
                input_type=body.input_type,
                cl100k=state.cl100k,
                token_ids=settings.token_ids or state.settings.token_ids,
            ),
        )

        request.state.access = {
            "model": settings.id,
            "inputs": len(prepared.sequences),
            "tokens": prepared.prompt_tokens,
        }
        try:
            vectors, cache_hits = await compute_vectors(
                request, state, model, prepared.sequences, deadline
            )
        except ClientGone:
            return Response(status_code=499)  # the client is gone; nobody reads this
    state.metrics.count_embedded(settings.id, len(prepared.sequences), prepared.prompt_tokens)
    if body.dimensions is not None and body.dimensions < vectors.shape[1]:
        vectors = shorten(vectors, body.dimensions, layer_norm=settings.matryoshka_layer_norm)
    content = (
        await asyncio.to_thread(
            embeddings_body, vectors, body.model, prepared.prompt_tokens, body.encoding_format
        )
        if len(vectors) > 64
        else embeddings_body(vectors, body.model, prepared.prompt_tokens, body.encoding_format)
    )
    headers = {}
    if state.cache is not None:
        headers["X-Ember-Cache-Hits"] = str(cache_hits)
    if prepared.retokenized_from is not None:
        headers["X-Ember-Token-Ids"] = f"{prepared.retokenized_from}; retokenized"
    return Response(content, media_type="application/json", headers=headers)


@protected.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics."""
    state = app_state(request)
    state.registry.rescan()  # a model removed since (`ember models rm`) loses its series
    models = {entry.model_id for entry in state.registry.models()}
    return PlainTextResponse(
        state.metrics.render(state.scheduler.queue_depths(), models),
        media_type=CONTENT_TYPE_LATEST,
    )


@protected.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> JSONResponse:
    """Every registered model, loaded or not."""
    state = app_state(request)
    state.registry.rescan()
    cards = [_card(entry) for entry in state.registry.models()]
    return JSONResponse(ModelList(data=cards).model_dump())


protected.add_api_route("/models", list_models, methods=["GET", "HEAD"], include_in_schema=False)


@protected.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def show_model(model_id: str, request: Request) -> JSONResponse:
    """One model by id or alias."""
    entry = app_state(request).registry.find(model_id)
    return JSONResponse(_card(entry).model_dump())


# HEAD beside every GET, as HTTP asks of a server (RFC 9110 9.1): the GET's answer without its
# body (uvicorn drops it), the key checked alike; undocumented, one operation each.
for _path, _endpoint in (
    ("/metrics", metrics),
    ("/v1/models", list_models),
    ("/v1/models/{model_id:path}", show_model),
):
    protected.add_api_route(_path, _endpoint, methods=["HEAD"], include_in_schema=False)
protected.add_api_route(
    "/models/{model_id:path}", show_model, methods=["GET", "HEAD"], include_in_schema=False
)


async def _parse_body(request: Request, state: AppState) -> EmbeddingRequest:
    limit = state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    # Checked before reading: read as JSON, a br body failed as "not valid UTF-8".
    applied = codings(request.headers.get("content-encoding", ""))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    if applied:
        body = (
            await asyncio.to_thread(decode, body, applied, limit)
            if len(body) > INLINE_DECODE_BYTES
            else decode(body, applied, limit)
        )
    raw = parse_json_body(body)
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return EmbeddingRequest.model_validate(raw)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise InvalidRequest(message, param=param) from exc


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body exceeds {limit} bytes (raise it with EMBER_MAX_BODY_BYTES).",
        param=None,
    )


def _check_dimensions(requested: int, native: int, supported: list[int], model_id: str) -> None:
    if requested == native:
        return
    if not supported:
        raise DimensionsNotSupported(
            f"Model '{model_id}' produces {native}-dimensional vectors and does not support "
            "'dimensions'.",
            param="dimensions",
        )
    if requested > native:
        raise DimensionsNotSupported(
            f"'dimensions' must be at most {native} for model '{model_id}'.", param="dimensions"
        )


def _card(entry: RegisteredModel) -> ModelCard:
    settings = entry.settings
    created = int(entry.folder.stat().st_mtime) if entry.folder.exists() else 0
    if settings is None:
        return ModelCard.model_validate(
            {
                **_EMPTY_CARD,
                "id": entry.model_id,
                "created": created,
                "status": "error",
                "error": entry.problem,
            }
        )
    status: Literal["ready", "loaded", "error"] = (
        "error" if entry.problem else ("loaded" if entry.loaded else "ready")
    )
    return ModelCard(
        id=settings.id,
        created=created,
        owned_by="ember",
        embedding=settings.embedding,
        engine=settings.engine,
        runtime=entry.loaded.engine.runtime if entry.loaded is not None else None,
        dimensions=settings.dimensions,
        max_tokens=settings.ctx_len,
        pooling=settings.pooling,
        normalize=settings.normalize,
        quantize=settings.quantize,
        int8_min_cosine=settings.int8_min_cosine,
        matryoshka_dimensions=settings.matryoshka_dimensions,
        prompts=settings.prompts,
        aliases=settings.aliases,
        keep_alive=settings.keep_alive,
        loaded=entry.loaded is not None,
        memory_bytes=entry.memory_estimate if entry.loaded is not None else 0,
        status=status,
        error=entry.problem,
    )


_EMPTY_CARD = {
    "owned_by": "ember",
    "embedding": False,
    "engine": "",
    "dimensions": 0,
    "max_tokens": 0,
    "pooling": "",
    "normalize": False,
    "matryoshka_dimensions": [],
    "prompts": {},
    "aliases": [],
    "keep_alive": None,
    "loaded": False,
    "memory_bytes": 0,
}
