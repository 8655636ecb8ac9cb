"""Ctrl-C and SIGTERM while training: finish the current update, then stop cleanly."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopFlag:
    """Set by a signal handler; the training loop polls it between updates."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Within the block, the first SIGINT/SIGTERM sets the flag instead of raising mid-update.

    Outside the main thread (where handlers cannot be installed) the flag simply never fires.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: object) -> None:
        flag.signal = signum  # a second signal is ignored: the checkpoint being written completes

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
