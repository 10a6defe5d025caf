"""Stopping on a signal at a clean point: Ctrl-C (SIGINT) and SIGTERM (what SLURM sends at
its time limit) while a job's runs are made, trained and closed become a *pending* stop,
which the driver acts on at its next lock-step boundary — where every replica's state is
whole — by writing a checkpoint and raising. Outside :meth:`GracefulStop.deferring`, or on a
second signal, they raise at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like Ctrl-C, runs end KILLED."""


class GracefulStop:
    """Installs SIGINT / SIGTERM handlers (main thread only) for the ``with`` block.
    ``stop()`` returns the pending exception (or None) for the driver to raise."""

    def __init__(self) -> None:
        self.pending: BaseException | None = None
        self._defer = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame) -> None:
        exc = Terminated(f"signal {signum}") if signum == signal.SIGTERM else KeyboardInterrupt()
        if self._defer and self.pending is None:
            self.pending = exc  # acted on at the driver's next lock-step boundary
            return
        raise exc

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Signals in this block wait for the driver (a second one raises at once)."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    def __call__(self) -> BaseException | None:
        return self.pending
