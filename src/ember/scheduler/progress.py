"""How much of the batches running on an engine's lanes is left to do, in padded tokens.

A lane that takes the tail of the pending work should leave the part that a lane freed a
moment later will finish at the same time. Spread over the idle lanes only, the first lane
to go idle took all of it, and the other, freed just after, found nothing: on 64 passages
the two lanes ended 40 ms apart in ~1 s. What a running batch has left is estimated from
the seconds a padded token has taken on a lane beside others; until a lane batch has ended,
a running batch counts whole, which leaves the tail to the idle lane, as before.
"""

from __future__ import annotations

import time

# Weight of the newest lane batch in the running estimate of seconds per padded token.
_RATE_WEIGHT = 0.2


class LaneProgress:
    """Running lane batches and their lanes' speed; its owner serialises access."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[float, int]] = {}  # batch key: (started, padded tokens)
        self._seconds_per_token: float | None = None
        self._next_key = 0

    def started(self, padded_tokens: int) -> int:
        """Note a batch started on a lane; the key to pass to `ended`."""
        key = self._next_key
        self._next_key += 1
        self._running[key] = (time.perf_counter(), padded_tokens)
        return key

    def ended(self, key: int, *, beside_others: bool) -> None:
        """Note a batch ended; one that ran beside others (on a lane's share of the cores)
        tells how fast the next will go."""
        started, padded_tokens = self._running.pop(key)
        if not beside_others or padded_tokens <= 0:
            return
        rate = (time.perf_counter() - started) / padded_tokens
        previous = self._seconds_per_token
        self._seconds_per_token = (
            rate if previous is None else previous + _RATE_WEIGHT * (rate - previous)
        )

    def remaining_tokens(self) -> int:
        """The padded tokens the running batches are estimated to have left."""
        if not self._running:
            return 0
        rate = self._seconds_per_token
        if rate is None:
            return sum(padded for _, padded in self._running.values())
        now = time.perf_counter()
        return sum(
            max(0, padded - int((now - started) / rate))
            for started, padded in self._running.values()
        )
