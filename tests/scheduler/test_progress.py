"""What the batches running on lanes have left, estimated from how fast lanes went."""

from __future__ import annotations

import time

from ember.scheduler.progress import LaneProgress


def test_a_running_batch_counts_whole_until_a_lane_batch_has_ended() -> None:
    progress = LaneProgress()
    assert progress.remaining_tokens() == 0
    progress.started(400)
    progress.started(100)
    assert progress.remaining_tokens() == 500


def test_what_is_left_shrinks_at_the_speed_lanes_went() -> None:
    progress = LaneProgress()
    first = progress.started(100)
    time.sleep(0.05)
    progress.ended(first, beside_others=True)  # about 0.5 ms a token
    progress.started(100)
    assert progress.remaining_tokens() > 80
    time.sleep(0.15)  # three times as long as the first took
    assert progress.remaining_tokens() == 0


def test_a_batch_run_alone_does_not_set_the_lanes_speed() -> None:
    progress = LaneProgress()
    alone = progress.started(100)
    progress.ended(alone, beside_others=False)  # on every core: faster than a lane
    progress.started(100)
    time.sleep(0.01)
    assert progress.remaining_tokens() == 100
