"""Ctrl-C and SIGTERM: before training starts (reading data, building the model) they stop at once;
while training, the current update finishes and the run stops cleanly with a checkpoint."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Stopped(KeyboardInterrupt):
    """Raised by the signal handler when there is nothing to save yet (e.g. during a data load)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopFlag:
    """Set by a signal handler. While `deferring` (inside the training loop, which polls the flag
    between updates) the signal only sets it; otherwise the handler raises Stopped at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.deferring = False

    def __call__(self) -> bool:
        return self.signal is not None


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Within the block, SIGINT/SIGTERM raise Stopped, or only set the flag while it is `deferring`.

    Outside the main thread (where handlers cannot be installed) the flag simply never fires.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: object) -> None:
        if flag.signal is not None:
            return  # a second signal is ignored: the checkpoint being written completes
        flag.signal = signum
        if not flag.deferring:
            raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def deferring(should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """Within the block a signal sets `should_stop` (when it is a StopFlag) instead of raising: the
    code inside polls it between updates and saves what it has."""
    if not isinstance(should_stop, StopFlag):
        yield
        return
    before, should_stop.deferring = should_stop.deferring, True
    try:
        yield
    finally:
        should_stop.deferring = before
