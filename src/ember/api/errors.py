"""The one table from domain errors to HTTP statuses and OpenAI error bodies."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ember import errors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str
    code: str | None


# Looked up along the exception's class hierarchy, most specific first.
ERROR_TABLE: dict[type[errors.EmberError], ErrorKind] = {
    errors.ContextLengthExceeded: ErrorKind(
        400, "invalid_request_error", "context_length_exceeded"
    ),
    errors.PayloadTooLarge: ErrorKind(413, "invalid_request_error", "request_too_large"),
    errors.LimitExceeded: ErrorKind(400, "invalid_request_error", "limit_exceeded"),
    errors.CodingNotSupported: ErrorKind(
        415, "invalid_request_error", "unsupported_content_encoding"
    ),
    errors.RequestBodyStalled: ErrorKind(408, "invalid_request_error", "request_timeout"),
    errors.RouteNotFound: ErrorKind(404, "invalid_request_error", "not_found"),
    errors.MethodNotAllowed: ErrorKind(405, "invalid_request_error", "method_not_allowed"),
    errors.DimensionsNotSupported: ErrorKind(
        400, "invalid_request_error", "dimensions_not_supported"
    ),
    errors.InvalidRequest: ErrorKind(400, "invalid_request_error", "invalid_value"),
    errors.AuthenticationFailed: ErrorKind(401, "invalid_request_error", "invalid_api_key"),
    errors.HostNotAllowed: ErrorKind(403, "invalid_request_error", "host_not_allowed"),
    errors.OriginNotAllowed: ErrorKind(400, "invalid_request_error", "cors_not_allowed"),
    errors.ModelNotFound: ErrorKind(404, "invalid_request_error", "model_not_found"),
    errors.ModelNotEmbedding: ErrorKind(400, "invalid_request_error", "model_not_embedding"),
    errors.EmbeddingUnsupported: ErrorKind(501, "not_implemented_error", None),
    errors.RuntimeMissing: ErrorKind(501, "not_implemented_error", "runtime_missing"),
    errors.ModelLoadFailed: ErrorKind(503, "server_error", "model_load_failed"),
    errors.InvalidModelSettings: ErrorKind(503, "server_error", "model_load_failed"),
    errors.ModelError: ErrorKind(503, "server_error", "model_unavailable"),
    errors.Overloaded: ErrorKind(429, "rate_limit_error", "rate_limit_exceeded"),
    errors.ShuttingDown: ErrorKind(503, "server_error", "shutting_down"),
    errors.RequestTimedOut: ErrorKind(503, "server_error", "timeout"),
    errors.EngineFailure: ErrorKind(503, "server_error", "engine_failure"),
    errors.EmberError: ErrorKind(500, "server_error", None),
}


def kind_of(error: errors.EmberError) -> ErrorKind:
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ERROR_TABLE[errors.EmberError]


def error_response(
    status: int,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        error_body(message, error_type, param=param, code=code),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> bytes:
    """The JSON of an OpenAI error: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return orjson.dumps(body)


def response_for(error: errors.EmberError) -> Response:
    kind = kind_of(error)
    param = error.param if isinstance(error, errors.InvalidRequest) else None
    headers: dict[str, str] = {}
    if isinstance(error, (errors.Overloaded, errors.ShuttingDown)):
        headers["Retry-After"] = str(error.retry_after_seconds)
    if isinstance(error, errors.AuthenticationFailed):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, errors.CodingNotSupported):  # what to send instead (RFC 9110 12.5.3)
        headers["Accept-Encoding"] = ", ".join(error.accepted)
    if isinstance(error, errors.MethodNotAllowed):  # the methods it takes (RFC 9110 15.5.6)
        headers["Allow"] = error.allowed
    return error_response(
        kind.status, error.message, kind.type, param=param, code=kind.code, headers=headers
    )


def internal_error_response(exc: BaseException) -> Response:
    """A bug, logged with its trace; the client gets the table's answer to the root
    EmberError (a plain 500), never the trace."""
    log.exception("unexpected error", exc_info=exc)
    return response_for(errors.EmberError("Internal server error."))


def validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """A readable message and the offending parameter from pydantic's error list."""
    problems = exc.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    location = [str(part) for part in first["loc"] if part != "body"]
    param = location[0] if location else None
    if param == "input":
        return (
            "'input' must be a non-empty string, an array of non-empty strings, an array of "
            "token ids (integers), or an array of token-id arrays.",
            "input",
        )
    if param is not None and first.get("type") == "missing":
        return f"'{param}' is required.", param
    where = ".".join(location) or "body"
    return f"Invalid value for '{where}': {first['msg']}.", param


def routing_error(request: Request, exc: HTTPException) -> errors.EmberError | None:
    """What routing refused, as the domain error the table answers, named as OpenAI names it
    ("Invalid URL (POST /v1/foo)"); None for another HTTPException."""
    where = f"{request.method} {request.url.path}"
    allowed = (exc.headers or {}).get("Allow")
    if exc.status_code == 404 and exc.detail == "Not Found":
        return errors.RouteNotFound(
            f"Invalid URL ({where}): Ember answers POST /v1/embeddings, GET /v1/models and "
            "GET /v1/models/{id}; a client's base URL ends in /v1."
        )
    if exc.status_code == 405 and allowed is not None:
        message = f"Method not allowed ({where}): this path takes {allowed}."
        if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            # A browser's CORS preflight, which answers it only when CORS is on.
            message += " To let a web page call Ember, list its origin in EMBER_CORS_ORIGINS."
        return errors.MethodNotAllowed(message, allowed)
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI-style body; nothing leaks a stack trace."""

    async def on_ember_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.EmberError)
        return response_for(exc)

    async def on_validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, param = validation_message(exc)
        return response_for(errors.InvalidRequest(message, param=param))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        refusal = routing_error(request, exc)
        if refusal is not None:
            return response_for(refusal)
        # Raised by the framework with a status of its own choosing, outside the table.
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), error_type, headers=headers)

    async def on_unexpected(_request: Request, exc: Exception) -> Response:
        return internal_error_response(exc)

    app.add_exception_handler(errors.EmberError, on_ember_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
