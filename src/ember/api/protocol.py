"""Wire models of the OpenAI embeddings API, in the reference's field order."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

TokenArray = Annotated[list[StrictInt], Field(min_length=1)]
EmbeddingInput = StrictStr | list[StrictStr] | TokenArray | list[TokenArray]


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings body; unknown fields are ignored, as OpenAI clients add some."""

    model_config = ConfigDict(extra="ignore")

    input: EmbeddingInput = Field(
        description="A string, an array of strings, an array of token ids, or an array of "
        "token-id arrays."
    )
    model: StrictStr = Field(description="ID of the embedding model to use.")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="float arrays, or base64 of little-endian float32."
    )
    dimensions: StrictInt | None = Field(
        default=None, ge=1, description="Shorten vectors to this many values (Matryoshka models)."
    )
    user: StrictStr | None = Field(default=None, description="Accepted and ignored.")
    truncate: StrictBool = Field(
        default=False, description="Ember extension: cut over-long inputs instead of refusing."
    )
    input_type: StrictStr | None = Field(
        default=None,
        description="Ember extension: the model prompt to apply (query, document, or a name the "
        "model defines).",
    )

    @field_validator("encoding_format", "truncate", mode="before")
    @classmethod
    def _null_means_default(cls, value: object, info: ValidationInfo) -> object:
        """Clients generated from OpenAI's spec (swagger-codegen's among them) send every option
        they were not given as null; OpenAI reads that as the default."""
        if value is None and info.field_name is not None:
            return cls.model_fields[info.field_name].default
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """One entry of GET /v1/models: OpenAI's fields first, then Ember's."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    embedding: bool
    engine: str
    runtime: str | None = None  # what computes the vectors, once loaded
    dimensions: int
    max_tokens: int
    pooling: str
    normalize: bool
    quantize: str | None = None
    int8_min_cosine: float | None = None
    matryoshka_dimensions: list[int]
    prompts: dict[str, str]
    aliases: list[str]
    keep_alive: float | None
    loaded: bool
    memory_bytes: int
    status: Literal["ready", "loaded", "error"]
    error: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
