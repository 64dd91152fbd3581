"""SIGINT / SIGTERM during training: finish the current step, checkpoint, exit non-zero. During an
evaluation outside the loop (at start, final), which keeps nothing worth finishing: stop at once, say so."""
from __future__ import annotations

import os
import signal


class Stopped(Exception):
    """Raised by StopRequest(immediate=True) when the signal arrives."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """Records the first SIGINT / SIGTERM instead of dying; a second SIGINT interrupts at once.
    ``immediate``: raise Stopped where the program is, for work that a restart redoes anyway."""

    def __init__(self, immediate: bool = False):
        self.signal: int | None = None
        self.immediate = immediate
        self._previous = {}

    def __enter__(self):
        self._pid = os.getpid()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:
            # a DataLoader worker forked inside the context (a terminal's Ctrl-C reaches it too): the main
            # process stops and shuts it down; a Stopped raised here would come back as a failed batch
            return
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        if self.immediate:
            raise Stopped(signum)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or 0)
