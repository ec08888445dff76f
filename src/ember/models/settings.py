"""One model's settings file, `model.json`: what it is, how to run and pool it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ember.atomic_write import write_json_atomically
from ember.errors import InvalidModelSettings
from ember.pooling import Pooling

SETTINGS_FILE = "model.json"

EngineName = Literal["onnx", "gguf", "fake"]


def _whole_number(value: object) -> object:
    """8192.0 is 8192: JSON has one number type, and a tool that edits settings may write a
    whole number that way (a round trip through floats, a UI slider's value). 8.5 and true
    are refused, saying so (strict mode refused true too, with a vaguer message)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (bool, float)):
        raise PydanticCustomError(
            "whole_number",
            "Input should be a whole number, not {value}",
            {"value": json.dumps(value)},
        )
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


class ModelSettings(BaseModel):
    """Settings of one registered model; unknown keys are kept so users may annotate freely."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: str = Field(min_length=1, description="Model id clients send as `model`.")
    engine: EngineName = Field(description="Runtime that executes the model.")
    embedding: bool = Field(default=True, description="Whether the model serves embeddings.")
    model_file: str = Field(
        default="model.onnx", description="Weights file, relative to the folder."
    )
    onnx_output: str | None = Field(
        default=None, description="ONNX output to read; default: sentence_embedding or the first."
    )
    tokenizer_file: str | None = Field(
        default="tokenizer.json", description="HF tokenizer file; None when the engine tokenises."
    )
    ubatch_size: WholeNumber = Field(
        default=512, ge=1, description="Token budget of one engine call (padded tokens)."
    )
    lanes: WholeNumber | None = Field(
        default=None,
        ge=1,
        description=(
            "ONNX on CPU: batches run at once when work piles up, each on cores/lanes "
            "threads, on a second session (a second copy of the weights); a batch with "
            "nothing beside it takes every core. Default: one per core; 1 keeps one session."
        ),
    )
    runtime: Literal["onnxruntime", "openvino"] = Field(
        default="onnxruntime",
        description=(
            "What runs an ONNX graph. openvino (the `openvino` extra; float32, CPU): on MiniLM "
            "1.12-1.19x ONNX Runtime's tokens/s called directly on standard operators, "
            "0.96-1.09x through the server on Ember's graphs (fused Attention); 1.5-2.5x the "
            "memory; each new batch shape's first call 15-30 ms longer."
        ),
    )
    ctx_len: WholeNumber = Field(
        ge=1, description="Maximum tokens per input, special tokens included."
    )
    pooling: Pooling = Field(default="mean", description="How token states become one vector.")
    normalize: bool = Field(default=True, description="L2-normalise the pooled vector.")
    quantize: Literal["int8"] | None = Field(
        default=None,
        description="Serve an int8 variant of the graph Ember built (Hugging Face folders).",
    )
    int8_min_cosine: float | None = Field(
        default=None,
        description="Min cosine of the int8 vectors to fp32 ones, measured on held-out text.",
    )
    dimensions: WholeNumber = Field(ge=1, description="Length of the vectors the model produces.")
    matryoshka_dimensions: list[WholeNumber] = Field(
        default_factory=list,
        description="Shorter lengths the model was trained for; empty refuses `dimensions`.",
    )
    matryoshka_layer_norm: bool = Field(
        default=False,
        description="Layer-normalise full vectors before shortening (nomic-embed-text v1.5).",
    )
    prompts: dict[str, str] = Field(
        default_factory=dict, description="Named prefixes, e.g. query -> 'search_query: '."
    )
    default_prompt: str | None = Field(
        default=None, description="Name of the prompt applied when the request names none."
    )
    aliases: list[str] = Field(default_factory=list, description="Other names for the model.")
    token_ids: Literal["auto", "model", "cl100k"] | None = Field(
        default=None, description="Vocabulary of token-id inputs; None follows the server."
    )
    ngl: WholeNumber = Field(
        default=0, ge=0, description="Layers to offload to a GPU (0: CPU only)."
    )
    keep_alive: float | None = Field(
        default=None, ge=0, description="Seconds idle before unloading; None keeps it loaded."
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelSettings:
        if self.default_prompt is not None and self.default_prompt not in self.prompts:
            raise ValueError(f"default_prompt {self.default_prompt!r} is not among prompts")
        too_long = [size for size in self.matryoshka_dimensions if size > self.dimensions]
        if too_long:
            raise ValueError(f"matryoshka_dimensions {too_long} exceed dimensions")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this model answers to."""
        return (self.id, *self.aliases)


def read_settings(folder: Path) -> ModelSettings:
    """Read and validate `folder/model.json`, with a message that names the problem.

    Types are strict, as the file is hand-edited: `"normalize": "yes"`, `"ctx_len": "512"` or
    `"embedding": 1` are refused rather than guessed at. Strict on the JSON text, not on a
    parsed dict, so it asks only for what JSON can say: strings still read as enums (should a
    field become one), whole numbers as floats, and whole floats (8192.0) as integers.
    """
    path = folder / SETTINGS_FILE
    try:  # utf-8-sig: Windows editors may start the file with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
        json.loads(text)  # syntax errors keep the json module's line and column message
    except FileNotFoundError as exc:
        raise InvalidModelSettings(f"{folder.name}: no {SETTINGS_FILE}", folder.name) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelSettings(
            f"{folder.name}: {SETTINGS_FILE} is not valid JSON ({exc})", folder.name
        ) from exc
    try:
        return ModelSettings.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise _invalid(folder.name, exc) from exc


def parse_settings(raw: Any, name: str) -> ModelSettings:
    """Validate a settings mapping Ember assembles (importers, the catalog); `name` labels
    errors. Lax, unlike read_settings: its values come from code and the files it imports."""
    try:
        return ModelSettings.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(name, exc) from exc


def _invalid(name: str, exc: ValidationError) -> InvalidModelSettings:
    """One line naming each field and its problem."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
        for error in exc.errors()
    )
    return InvalidModelSettings(f"{name}: invalid {SETTINGS_FILE}: {problems}", name)


def write_settings(folder: Path, settings: ModelSettings) -> None:
    """Write `model.json` atomically so a crash never leaves a half-written file."""
    write_json_atomically(folder / SETTINGS_FILE, settings.model_dump(mode="json"))
