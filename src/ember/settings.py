"""Server settings, read once at start-up from flags, environment (EMBER_*) and defaults."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_PORT = 1337


def default_home() -> Path:
    return Path.home() / ".ember"


class ServerSettings(BaseSettings):
    """Everything the server process needs to know; passed down, never re-read."""

    model_config = SettingsConfigDict(env_prefix="EMBER_", frozen=True, extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="Port to bind.")
    api_key: str | None = Field(
        default=None, description="Bearer key required on every route but /health."
    )
    home: Path = Field(default_factory=default_home, description="Ember's data folder.")
    models_dir: Path | None = Field(
        default=None, description="Folder of model folders; default HOME/models."
    )
    offline: bool = Field(default=False, description="Never fetch models from the index.")
    max_inputs_per_request: int = Field(default=2048, ge=1, description="Inputs per request.")
    max_tokens_per_request: int = Field(
        default=300_000, ge=1, description="Tokens per request, all inputs together."
    )
    max_input_chars: int = Field(
        default=1_000_000, ge=1, description="Characters per input, checked before tokenising."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Request body size limit in bytes."
    )
    max_queued_inputs: int = Field(
        default=100_000, ge=1, description="Inputs waiting per model before 429."
    )
    max_request_memory_mb: int = Field(
        default=1024,
        ge=1,
        description="Memory one request may need (its vectors, response and token ids, "
        "estimated before any work); larger requests are refused.",
    )
    request_timeout: float = Field(
        default=600.0, gt=0, description="Seconds before a request is abandoned with 503."
    )

    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra Host header names to accept ('*' for any); localhost names and the "
        "bind address always are.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS; none by default."
    )
    insecure: bool = Field(
        default=False, description="Allow binding beyond loopback without an API key."
    )
    token_ids: Literal["auto", "model", "cl100k"] = Field(
        default="auto",
        description="Vocabulary of token-id inputs: the model's, OpenAI's cl100k_base (decoded "
        "and re-tokenised), or auto-detected.",
    )
    cache_entries: int = Field(
        default=0, ge=0, description="Vectors kept in the in-memory cache (0: no cache)."
    )
    cache_path: Path | None = Field(
        default=None, description="SQLite file that keeps cached vectors across restarts."
    )
    cache_path_max_entries: int = Field(
        default=1_000_000,
        ge=1,
        description="Vectors the cache file keeps at most; the oldest stored go first.",
    )
    max_loaded_memory_mb: int | None = Field(
        default=None,
        ge=1,
        description="Memory for loaded models; the least recently used is unloaded to make room.",
    )
    idle_check_seconds: float = Field(
        default=5.0, gt=0, description="How often models past their keep_alive are unloaded."
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, SIGINT or SIGHUP, how long in-flight requests may finish.",
    )

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """EMBER_ALLOWED_HOSTS=a,b reads as a list, as people write it in a shell."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("host")
    @classmethod
    def _bare_address(cls, value: str) -> str:
        """[::1] (an IPv6 address as URLs write it) binds ::1; uvicorn could not resolve it."""
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            return value[1:-1]
        return value

    @field_validator("api_key")
    @classmethod
    def _strip_key(cls, value: str | None) -> str | None:
        """A key read from a file keeps its newline, but HTTP strips the whitespace around
        header values, so such a key could never be presented; a blank key is no key."""
        return (value.strip() or None) if value is not None else None

    @field_validator("home", "models_dir")
    @classmethod
    def _not_a_file(cls, value: Path | None) -> Path | None:
        """A folder path that names a file is refused, as the --home flag refuses it; it
        would otherwise serve no models, or fail only when the first pull writes there."""
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError("a file, not a folder")
        return value

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.home / "models"


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> ServerSettings:
    """Settings from `environ` (default: the process environment) with `overrides` on top.

    Passing `environ` lets tests inject an environment without touching os.environ.
    """
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    if environ is None:
        return ServerSettings(**given)
    from_env = {
        key.removeprefix("EMBER_").lower(): value
        for key, value in environ.items()
        if key.startswith("EMBER_")
    }
    return ServerSettings.model_validate({**from_env, **given})
