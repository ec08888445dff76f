"""What the app keeps on `app.state`: settings, registry, scheduler. No module globals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from ember.api.metrics import Metrics
from ember.api.token_ids import Cl100k
from ember.cache import EmbeddingCache

if TYPE_CHECKING:
    from ember.api.compute import Fingerprints
from ember.models.registry import ModelRegistry
from ember.scheduler import Scheduler
from ember.settings import ServerSettings


@dataclass(frozen=True)
class AppState:
    settings: ServerSettings
    registry: ModelRegistry
    scheduler: Scheduler
    metrics: Metrics
    cl100k: Cl100k
    cache: EmbeddingCache | None
    fingerprints: Fingerprints


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.ember
    return state
