"""Stopping a run with SIGTERM, SIGHUP or SIGINT (Ctrl-C): exit code 128 + signal (143, 129, 130) and one line
saying where.

Inside :func:`stop_on_signals` the first signal during a Lightning loop sets the flag Lightning's own SIGTERM
handling sets: training stops at the end of the current step — and
:class:`~threestudio.utils.checkpoint_io.FiniteModelCheckpoint` writes that step's checkpoint, atomically, so
``resume=`` continues it —, a test or validation pass after the current view. A second signal, or one outside
a loop (loading, the export, the report), stops at once. Either way the runner turns the stop into
:class:`RunInterrupted`, whose message says where the run stopped and how to continue.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import Any, Iterator, Optional

logger = logging.getLogger(__name__)

# SIGHUP (the terminal closed, ``kill -HUP``) is handled as SIGTERM: its default would end the run without a
# checkpoint, a message or the lock's release
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, n))


class RunInterrupted(Exception):
    """A run stopped by a signal; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequest:
    """The signal received (``signum``, None while none) and the Lightning trainer whose loop is running."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.trainer: Any = None
        # where the run was, for the message (set by the runner)
        self.trial_dir: Optional[str] = None
        self.stage: Optional[str] = None  # "train" | "test"
        self.saved_step: Optional[int] = None
        self.views_done: Optional[int] = None
        self.views_total: Optional[int] = None

    def handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = signum
        connector = getattr(self.trainer, "_signal_connector", None)
        if first and connector is not None:
            connector.received_sigterm = True  # Lightning's loops stop at the next step / view boundary
            logger.warning("received %s: stopping after the current step or view (send it again to stop at once)",
                           signal_name(signum))
            return
        raise KeyboardInterrupt(signal_name(signum))

    @contextlib.contextmanager
    def graceful(self, trainer: Any) -> Iterator[None]:
        """While the body runs ``trainer``'s fit / validate / test loop, a first signal stops it gracefully."""
        self.trainer = trainer
        try:
            yield
        finally:
            self.trainer = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Handle SIGTERM, SIGHUP and SIGINT for the body (main thread only); the previous handlers come back after it."""
    request = StopRequest()
    previous = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, request.handle)
    except ValueError:  # not the main thread: leave the signals alone
        pass
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
