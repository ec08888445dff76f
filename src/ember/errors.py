"""Domain exceptions: what can go wrong, independent of HTTP.

The tree (the API maps each leaf to a status and an OpenAI error body in one table,
``ember.api.errors``)::

    EmberError
    ├── InvalidRequest              the request itself is wrong (param names the field)
    │   ├── ContextLengthExceeded   an input has more tokens than the model takes
    │   ├── LimitExceeded           a configured request limit was breached
    │   │   └── PayloadTooLarge     the body is larger than the server accepts
    │   ├── CodingNotSupported      the body's Content-Encoding is one the server cannot undo
    │   ├── RequestBodyStalled      the body stopped arriving before its end
    │   ├── RouteNotFound           no route answers the request's path
    │   ├── MethodNotAllowed        the path is answered, but not for this method
    │   └── DimensionsNotSupported  `dimensions` asked of a model that cannot shorten
    ├── AuthenticationFailed        missing or wrong API key
    ├── HostNotAllowed              the Host header is not one the server answers to
    ├── OriginNotAllowed            a browser's CORS preflight asks for an origin or method
    │                               the server does not allow
    ├── ModelError
    │   ├── ModelNotFound           no such model id in the registry
    │   ├── ModelNotEmbedding       the model's settings lack "embedding": true
    │   ├── EmbeddingUnsupported    the loaded instance cannot embed (reload it)
    │   ├── ModelLoadFailed         files missing, corrupt or unreadable
    │   ├── InvalidModelSettings    model.json is malformed
    │   ├── RuntimeMissing          the engine's optional dependency is not installed
    │   └── ModelPullError          fetching or verifying a model package failed
    ├── Overloaded                  the model's queue is full: retry later
    ├── ShuttingDown                the server stopped before the request finished: retry it
    ├── RequestTimedOut             the request took longer than allowed
    └── EngineFailure               the engine raised while running a batch
"""

from __future__ import annotations


class EmberError(Exception):
    """Root of every error Ember raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(EmberError):
    """The request is malformed or asks for something the model cannot do."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidRequest):
    """One input is longer, in tokens, than the model accepts."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(
            f"Input exceeds maximum token limit: input {index} has {tokens} tokens, "
            f'the model accepts at most {limit}. Shorten it, or send "truncate": true '
            "to cut it to the limit.",
            param="input",
        )
        self.index = index
        self.tokens = tokens
        self.limit = limit


class LimitExceeded(InvalidRequest):
    """A server-side limit (inputs, tokens, characters) was breached."""


class PayloadTooLarge(LimitExceeded):
    """The request body is larger than the configured maximum."""


class CodingNotSupported(InvalidRequest):
    """The body's Content-Encoding names a coding the server cannot undo; `accepted` names
    those it can, so the client can send the body again in one of them."""

    def __init__(self, message: str, accepted: tuple[str, ...]) -> None:
        super().__init__(message)
        self.accepted = accepted


class RequestBodyStalled(InvalidRequest):
    """No byte of the request's body came for longer than the server waits: the connection
    is closed after the answer."""


class RouteNotFound(InvalidRequest):
    """No route answers the path: most often a client's base URL without /v1."""


class MethodNotAllowed(InvalidRequest):
    """The path is served for other methods, `allowed` (as the Allow header lists them)."""

    def __init__(self, message: str, allowed: str) -> None:
        super().__init__(message)
        self.allowed = allowed


class DimensionsNotSupported(InvalidRequest):
    """`dimensions` was given for a model that cannot produce shortened vectors."""


class AuthenticationFailed(EmberError):
    """The API key is missing or wrong."""


class HostNotAllowed(EmberError):
    """The Host header names a host this server does not answer to."""


class OriginNotAllowed(EmberError):
    """A browser's CORS preflight names an origin (or method) the server does not allow."""


class ModelError(EmberError):
    """Something about a model prevents serving it."""

    def __init__(self, message: str, model_id: str | None = None) -> None:
        super().__init__(message)
        self.model_id = model_id


class ModelNotFound(ModelError):
    """No model with that id or alias is registered."""


class ModelNotEmbedding(ModelError):
    """The model is registered but is not an embedding model."""


class EmbeddingUnsupported(ModelError):
    """The loaded model instance was created without embedding support."""


class ModelLoadFailed(ModelError):
    """The model's files could not be loaded."""


class InvalidModelSettings(ModelError):
    """A model's settings file is malformed or inconsistent."""


class RuntimeMissing(ModelError):
    """The engine the model needs is an optional extra that is not installed."""


class ModelPullError(ModelError):
    """Fetching, verifying or unpacking a model package failed."""


class Overloaded(EmberError):
    """The model's queue is full; the client should retry after a pause."""

    def __init__(self, message: str, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ShuttingDown(EmberError):
    """The server is stopping and cut the request short; it can be sent again, elsewhere or
    once the server is back."""

    def __init__(self, message: str, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class RequestTimedOut(EmberError):
    """The request did not complete within the configured timeout."""


class EngineFailure(EmberError):
    """The inference engine raised while computing a batch."""
