"""Scheduling: batches work across requests by token budget and feeds each model's engine."""

from __future__ import annotations

from ember.scheduler.scheduler import Scheduler
from ember.scheduler.worker import ModelWorker

__all__ = ["ModelWorker", "Scheduler"]
