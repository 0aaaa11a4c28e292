"""Ctrl-C and SIGTERM for the command lines: both stop a run like an exception, with one line, never a traceback.

SIGINT raises KeyboardInterrupt and SIGTERM raises `Terminated` in the main thread, so a run unwinds the same way
for both (atomic writes mean nothing is half-written) and the CLI prints one line and exits 130 / 143. While a block
runs `deferred()`, a signal is only noted and raised when the block ends: an exception raised inside a C extension's
import (torch, numpy) can leave it half-initialised and surface later as an unrelated ImportError.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(BaseException):
    """SIGTERM, as an exception (a BaseException, like KeyboardInterrupt, so `except Exception` does not eat it)."""


class Interrupts:
    """Install with `with interrupts.installed():`; defer with `with interrupts.deferred():`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.deferring = False
        self.pending: int | None = None

    def _handle(self, signum, frame):
        if self.deferring:
            self.pending = self.pending or signum
            return
        self._raise(signum)

    @staticmethod
    def _raise(signum: int):
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    @contextlib.contextmanager
    def installed(self):
        """Handle both signals inside the block (main thread only; elsewhere signals cannot be handled)."""
        main = threading.current_thread() is threading.main_thread()
        previous = [signal.signal(sig, self._handle) for sig in self.SIGNALS] if main else []
        try:
            yield self
        finally:
            for sig, handler in zip(self.SIGNALS, previous):
                if handler is not None:  # None: the old handler was not set from Python and cannot be restored
                    signal.signal(sig, handler)

    @contextlib.contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
            pending, self.pending = self.pending, None
            if pending is not None:
                self._raise(pending)
