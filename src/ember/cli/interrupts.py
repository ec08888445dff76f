"""Ctrl-C, SIGTERM and SIGHUP during a command (`ember models add|pull`, `ember embed`): one
exception, raised once, that says which signal came, so the command can say what it kept
and exit as a shell expects (128 + the signal). By default SIGTERM and SIGHUP end the
process silently, leaving a service's log no word of what was saved.

A second Ctrl-C while the first one's cleanup runs would cut that cleanup short (a
half-removed staging folder), so later signals are ignored until the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

# Signals that stop a command: Ctrl-C, `kill`, a closed terminal (those that exist here).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; a KeyboardInterrupt, so code that expects Ctrl-C still sees one."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """What a shell reports for a command a signal stopped: 128 + its number (130: SIGINT)."""
        return 128 + self.signum


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, the first stop signal raises Interrupted and later ones are ignored.

    Signals ignored when the block starts (under `nohup`, SIGHUP) stay ignored. Outside the
    main thread Python cannot set handlers, and the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Interrupted(signum)

    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
