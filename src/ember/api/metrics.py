"""Prometheus metrics of one app, on its own registry (no process-global state)."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_SEQUENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class Metrics:
    """The server's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ember_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ember_request_duration_seconds",
            "Request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inputs = Counter(
            "ember_inputs", "Inputs embedded, by model.", ["model"], registry=self.registry
        )
        self.tokens = Counter(
            "ember_tokens", "Tokens embedded, by model.", ["model"], registry=self.registry
        )
        self.batch_sequences = Histogram(
            "ember_batch_sequences",
            "Sequences per engine batch.",
            buckets=BATCH_SEQUENCE_BUCKETS,
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            "ember_batch_padded_tokens",
            "Padded tokens per engine batch.",
            buckets=BATCH_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "ember_queue_depth", "Inputs waiting, by model.", ["model"], registry=self.registry
        )
        self.model_load_seconds = Gauge(
            "ember_model_load_seconds",
            "Time the last load of a model took.",
            ["model"],
            registry=self.registry,
        )
        self.cache = Counter(
            "ember_cache_lookups",
            "Embedding cache lookups by result.",
            ["result"],
            registry=self.registry,
        )
        # Labelled children, each looked up once: `labels()` checks and joins its label values
        # on every call (four calls a request).
        self._request_counters: dict[tuple[str, int], Any] = {}
        self._latency_histograms: dict[str, Any] = {}
        self._embedded_counters: dict[str, tuple[Any, Any]] = {}
        self._labelled_models: set[str] = set()  # the models some series is labelled with

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(route, str(status))
        counter.inc()
        histogram = self._latency_histograms.get(route)
        if histogram is None:
            histogram = self._latency_histograms[route] = self.latency.labels(route)
        histogram.observe(seconds)

    def count_embedded(self, model_id: str, inputs: int, tokens: int) -> None:
        counters = self._embedded_counters.get(model_id)
        if counters is None:
            counters = self.inputs.labels(model_id), self.tokens.labels(model_id)
            self._embedded_counters[model_id] = counters
            self._labelled_models.add(model_id)
        counters[0].inc(inputs)
        counters[1].inc(tokens)

    def observe_batch(self, sequences: int, padded_tokens: int) -> None:
        self.batch_sequences.observe(sequences)
        self.batch_tokens.observe(padded_tokens)

    def observe_load(self, model_id: str, seconds: float) -> None:
        self.model_load_seconds.labels(model=model_id).set(seconds)
        self._labelled_models.add(model_id)

    def render(self, queue_depths: Mapping[str, int], models: Collection[str]) -> bytes:
        """The exposition text, with per-model series for `models` (the registry's ids) only.

        A model removed kept every series it had, its queue depth at 0, for the server's life;
        one merely unloaded keeps them, as it may load again. Dropped here, at every scrape,
        rather than when the removal is seen: a request that was still running on the removed
        model counts its inputs after, which would label a series again.
        """
        for model_id in self._labelled_models - set(models):
            for metric in (self.inputs, self.tokens, self.queue_depth, self.model_load_seconds):
                # A series it never had: older prometheus_client versions raised KeyError.
                with contextlib.suppress(KeyError):
                    metric.remove(model_id)
            self._embedded_counters.pop(model_id, None)
            self._labelled_models.discard(model_id)
        for model_id, depth in queue_depths.items():
            if model_id in models:  # a removed model's worker stays till the scheduler forgets it
                self.queue_depth.labels(model=model_id).set(depth)
                self._labelled_models.add(model_id)
        return generate_latest(self.registry)
