"""What can stop a bulk run, as domain errors beside Ember's own tree.

The tree (each is an `ember.errors.EmberError`; the CLI prints the message)::

    BulkError
    ├── InputUnreadable      a row, header or column of the input cannot be used
    ├── CheckpointMismatch   the checkpoint was made by a different run: refuse to resume
    ├── CheckpointBroken     the checkpoint or the partial output it describes is damaged
    ├── OutputBusy           another run is writing the same output now
    ├── OutputExists         OUTPUT is there and no checkpoint says this run is making it
    └── ExtraMissing         a format needs an optional extra that is not installed
"""

from __future__ import annotations

from ember.errors import EmberError


class BulkError(EmberError):
    """A bulk run cannot start or go on."""


class InputUnreadable(BulkError):
    """The input file, or one of its rows, is not what the chosen format expects."""


class CheckpointMismatch(BulkError):
    """A checkpoint exists for other input, model or options; resuming would mix outputs."""


class CheckpointBroken(BulkError):
    """The checkpoint, or the partial output it points at, is unreadable or shorter than noted."""


class OutputBusy(BulkError):
    """Another run holds the output's lock: two runs would write over each other's rows."""


class OutputExists(BulkError):
    """OUTPUT exists and is no run's unfinished work: replacing it needs --restart."""


class ExtraMissing(BulkError):
    """An optional dependency is needed for the format asked for."""
