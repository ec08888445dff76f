"""Runs the app under uvicorn with a graceful, zero-exit shutdown on SIGTERM, SIGINT and SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
from collections.abc import Generator
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from ember.api.app import create_app
from ember.api.http_protocol import REQUEST_HEAD_SECONDS, GuardedHttpToolsProtocol
from ember.settings import ServerSettings

log = logging.getLogger(__name__)

# SIGHUP too: closing the terminal a server runs in sends it, and its default action kills the
# process at once, losing in-flight requests.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
if sys.platform != "win32":
    STOP_SIGNALS += (signal.SIGHUP,)


class GracefulServer(uvicorn.Server):
    """Stops accepting, lets in-flight requests finish (bounded), then returns normally.

    uvicorn re-raises the signal after its shutdown, so a supervisor would see a death by
    SIGTERM; a service asked to stop that stopped cleanly should exit 0. An ignored SIGHUP
    stays ignored: `nohup ember serve` asked for the server to outlive its terminal.
    """

    _cut_short = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig, handler in previous.items():
            if not (sig.name == "SIGHUP" and handler is signal.SIG_IGN):
                signal.signal(sig, self._ask_to_exit)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _ask_to_exit(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.should_exit:
            log.info("received %s: finishing in-flight requests", name)
            self.should_exit = True
        elif not self._cut_short:
            # A second signal ends the grace period now, as its timeout would: requests still
            # running answer 503, and the app closes as usual (uvicorn's force_exit skipped
            # the app's shutdown, and its cancelled lifespan logged a traceback).
            log.info("received %s again: cutting in-flight requests short", name)
            self._cut_short = True
            asyncio.get_running_loop().call_soon_threadsafe(self._cancel_requests)
        else:  # a third: stop at once, without closing the app
            log.info("received %s a third time: exiting now", name)
            self.force_exit = True

    def _cancel_requests(self) -> None:
        for task in self.server_state.tasks:
            task.cancel(msg="in-flight requests cut short by a second signal")


def uvicorn_config(app: ASGIApp, settings: ServerSettings, *, log_level: str) -> uvicorn.Config:
    """How Ember runs under uvicorn; the tests' in-thread servers use it too."""
    grace = settings.shutdown_grace_seconds
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,  # ObserveMiddleware writes Ember's own access log
        proxy_headers=False,  # applied past the embeddings route (forwarded_headers_applied)
        http=GuardedHttpToolsProtocol,
        # Idle connections close on the protocol's head timer. uvicorn's own default (5 s) is
        # the expiry of httpx's pool too: a request sent as both ran out failed (ReadError).
        timeout_keep_alive=math.ceil(REQUEST_HEAD_SECONDS),
        lifespan="on",
        # uvicorn hands this to asyncio.timeout, which takes float seconds (int() made 0.9
        # no grace at all) and None for no limit (int() of inf raised OverflowError).
        timeout_graceful_shutdown=None if math.isinf(grace) else grace,  # type: ignore[arg-type]
    )


def run_server(settings: ServerSettings, *, log_level: str = "info") -> None:
    GracefulServer(uvicorn_config(create_app(settings), settings, log_level=log_level)).run()
