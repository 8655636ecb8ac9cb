"""One run trained by the P processes `mpiexec -n P sgdcli train` starts: rank 0 trains and writes
the run as a single process would; every other rank trains an identical silent copy, set up from
rank 0's checkpoint, and writes nothing. How they start, agree and end together."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from sgdcli.config.schema import AnyConfig, ExperimentConfig
from sgdcli.engine import blas, workers
from sgdcli.errors import SgdcliError, UsageError
from sgdcli.runs import checkpoint
from sgdcli.runs import directory as runs
from sgdcli.training import interrupts
from sgdcli.training import resume as resuming
from sgdcli.training.parallel import (
    DataParallel,
    MpiCommunicator,
    PeerFailed,
    QuietExit,
    exit_code,
    launched_rank,
)
from sgdcli.training.session import Reporter, Session, TrainResult

NOTHING_TO_DO = -1  # rank 0's start code when a resumed run has nothing left to do
CODE = np.dtype("<i4")  # the start code that precedes rank 0's checkpoint in its broadcast


def refuse(what: str) -> None:
    """What cannot run under mpiexec: one message from rank 0 (exit 2); the other ranks end quietly."""
    if launched_rank():
        raise QuietExit(UsageError.exit_code)
    raise UsageError(f"{what}; run it without mpiexec (mpiexec -n P sgdcli train trains one model on P processes)")


def train(load: Callable[[], AnyConfig], runs_dir: Path, reporter: Reporter | None,
          should_stop: Callable[[], bool] | None, run_dir: Path | None = None) -> TrainResult:
    """Train the config `load()` gives into a new run directory on every process MPI started (rank 0
    writes it): under `runs_dir`, or exactly `run_dir` (`train --run-dir`), which must not exist yet.
    Rank 0 alone loads the config (the others get it with rank 0's state): a bad one is reported once.

    Raises what loading and `Session.start` raise on rank 0, QuietExit on the other ranks (their exit
    status, also when training ended normally: rank 0 alone reports), PeerFailed when another rank failed.
    """
    with interrupts.deferring(should_stop):  # (a signal from here on is seen after the first collective)
        parallel = DataParallel(MpiCommunicator())
        parallel.status(0)  # the first collective: a process that stopped before training sends its status here (cli/ranks.py)

    def open_session() -> Session:
        config = load()
        if not isinstance(config, ExperimentConfig):
            refuse("an objective config is a few hundred steps on a formula: there is no data to split")
        return Session.start(config, Path(runs_dir), reporter, run_dir, parallel)
    with cores_shared(parallel.comm):
        if parallel.rank:
            _follow(parallel, should_stop)
        return _lead(parallel, open_session, should_stop, True)


def resume(run_dir: Path, load: Callable[[], ExperimentConfig | None], overrides: Sequence[str],
           reporter: Reporter | None, should_stop: Callable[[], bool] | None) -> TrainResult:
    """Continue a data-parallel run on the number of processes it was trained on (as `train`; `load()`:
    the config given with it, or None)."""
    with interrupts.deferring(should_stop):  # (as `train`)
        parallel = DataParallel(MpiCommunicator())
        parallel.status(0)
    with cores_shared(parallel.comm):
        if parallel.rank:
            _follow(parallel, should_stop)
        return _lead(parallel, lambda: Session.resume(Path(run_dir), load(), tuple(overrides), reporter, parallel),
                     should_stop, False)


@contextmanager
def cores_shared(comm) -> Iterator[None]:
    """This rank's share of its machine's cores for the block: the ranks on one machine (``comm``, an
    MpiCommunicator; collectives) divide its usable cores among their BLAS pools (``workers.threads_each``,
    ``blas.threads``) unless the user gave OpenBLAS a count (``workers.user_threads``), and every rank then
    takes the least count of all ranks, so that "each" is true and a resume, which trains every rank on rank
    0's recorded count, gives each the count it trained on. A rank on one thread runs the engine's split passes
    on one thread too (``workers.one_thread``). Two ranks on two cores with a two-thread pool each trained
    5.3x slower than with one thread each (README, MPI)."""
    count = workers.threads_each(comm.ranks_on_machine())
    with ExitStack() as stack:
        if count is not None:
            stack.enter_context(blas.threads(count))
        counts = np.zeros((comm.size, 1), np.int64)
        own = blas.thread_count() or count or workers.usable_cores()  # (another BLAS: what it was told, or the cores)
        comm.allgather(np.array([own], np.int64), counts)
        least = int(counts.min())
        stack.enter_context(blas.threads(least))
        if least < 2:
            stack.enter_context(workers.one_thread())
        yield


def _lead(parallel: DataParallel, open_session: Callable[[], Session], should_stop: Callable[[], bool] | None,
          new_run: bool) -> TrainResult:
    """Rank 0: set the run up with every check a single process makes, send the others its state, train."""
    try:
        session = open_session()
        code, state = (NOTHING_TO_DO, b"") if session.finished else (0, checkpoint.encode(session._state()))
    except BaseException as exc:  # the others wait for this broadcast: tell them, then report
        parallel.comm.broadcast(np.array([exit_code(exc)], CODE).tobytes())
        raise
    parallel.comm.broadcast(np.array([code], CODE).tobytes() + state)
    if session.finished:
        return session.run(should_stop)
    with interrupts.deferring(should_stop):  # from here a signal stops every rank after the same update
        try:
            parallel.status(0)
        except PeerFailed as exc:
            session.close()
            if new_run and runs.remove_unstarted(session.run_dir):
                raise PeerFailed(f"{exc.message}, and its directory {session.run_dir} was removed",
                                 exc.exit_code) from None
            raise
        return _train(parallel, session, should_stop)


def _follow(parallel: DataParallel, should_stop: Callable[[], bool] | None) -> NoReturn:
    """Ranks 1..P-1: a silent copy of rank 0's run from the state it sends; ends with QuietExit."""
    with interrupts.deferring(should_stop):  # rank 0 decides whether a signal before training ends the run
        data = parallel.comm.broadcast(None)
        code = int(np.frombuffer(data[: CODE.itemsize], CODE)[0])
        if code:
            raise QuietExit(max(code, 0))  # rank 0 failed (and said why), or there is nothing to do
        try:
            state = checkpoint.decode(data[CODE.itemsize :], "the checkpoint MPI rank 0 sent")
            source = Path(f"<MPI rank 0's {runs.LAST}>")
            config = resuming.checkpoint_config(source, state)
            session = SilentSession(config, None, None, int(state.meta["schedule_epochs"]), parallel)
            resuming.check_same_data(state.meta.get("data"), session.data, source)
            session._restore(source, state)
            # (rank 0's count: the one the run trained on, when it resumes; rank 0 warns of a higher one)
            session.blas_threads, _ = resuming.blas_threads(state.meta, source, session.blas_threads)
        except BaseException as exc:
            parallel.status(exit_code(exc))
            if isinstance(exc, SgdcliError) and not isinstance(exc, PeerFailed):  # only this rank knows why
                where = f"MPI process {parallel.rank}"
                error = (type(exc)(exc.message, source=f"{where}: {exc.source}") if exc.source
                         else type(exc)(f"{where}: {exc.message}"))
                error.only_here = True
                raise error from None
            raise
        parallel.status(0)
        result = _train(parallel, session, should_stop)
    raise QuietExit(_status_code(result.status, should_stop))


def _train(parallel: DataParallel, session: Session, should_stop: Callable[[], bool] | None) -> TrainResult:
    try:
        result = session.run(should_stop)
    except (PeerFailed, QuietExit):  # another rank failed: it has already sent its last collective
        raise
    except BaseException as exc:  # tell the others, waiting for the next update, before reporting
        parallel.finish(exit_code(exc))
        raise
    parallel.finish(0)
    return result


def _status_code(status: str, should_stop: Callable[[], bool] | None) -> int:
    if status == "diverged":
        return 5
    if status == "interrupted":
        return 128 + (getattr(should_stop, "signal", None) or signal.SIGINT)
    return 0


class SilentSession(Session):
    """A rank other than 0: trains, measures (so early stopping decides alike) and writes nothing."""

    def _metrics_writer(self, columns: list[str]) -> Any:
        return _NoMetrics()

    def _save_epoch(self, row: dict[str, Any]) -> None:
        self._note_best(row)

    def _save_last(self) -> None:
        return None

    def _finish(self, status: str, message: str | None, stopped_early: bool, started: float) -> TrainResult:
        return TrainResult(self.run_dir, status, {}, message)


class _NoMetrics:
    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
