"""Ctrl-C and SIGTERM during a long computation (training) as a request to stop at the next safe point,
so that what was computed so far is kept instead of lost in a traceback.

    with StopOnSignal() as stop:
        meta = train(spectra, out, config, stop=stop.requested)   # ends after the epoch the signal fell in
    if stop.signal is not None: ...                              # say what was kept, exit 128 + signal

A second signal of the same kind stops at once (the default behaviour, KeyboardInterrupt), for a user who
does not want to wait for the epoch to end. Outside the main thread nothing is installed (signals are only
delivered there).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

import structlog

log = structlog.get_logger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Context manager: while active, the first SIGINT or SIGTERM sets ``signal`` instead of raising."""

    def __init__(self, on_signal: Callable[[], None] | None = None) -> None:
        self.signal: signal.Signals | None = None
        """The signal that asked to stop, None while none came."""
        self._on_signal = on_signal
        """Called (in the signal handler) by the first signal: e.g. to tell worker processes."""
        self._previous: dict[signal.Signals, Any] = {}

    def requested(self) -> bool:
        """True once a signal asked to stop: the computation stops at its next safe point."""
        return self.signal is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.signal is not None:  # the second one: stop now
            previous = self._previous.get(sig)
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        self.signal = sig
        if self._on_signal is not None:
            self._on_signal()
        log.warning("stopping at the next safe point (again to stop at once)", signal=sig.name)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


__all__ = ["StopOnSignal"]
