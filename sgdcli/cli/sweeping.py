"""`sgdcli train --sweep/--seeds`: the executor options checked, the sweep run, its members and comparison rendered."""

from __future__ import annotations

from enum import Enum
from pathlib import Path


class SweepExecutor(str, Enum):
    local = "local"
    dask = "dask"


def sweep_command(config: Path, overrides: list[str], sweep: list[str], runs_dir: Path, jobs: int,
                  name: str | None, plot: Path, seeds: int | None, executor: SweepExecutor,
                  scheduler: str | None, run_dir: Path | None, overwrite: bool = False) -> int:
    """Run the sweep, show each member as it finishes and then the comparison; return the exit status
    (sgdcli.training.sweep.exit_status, or 128 + the signal when it was stopped)."""
    from sgdcli import api
    from sgdcli.cli import render
    from sgdcli.errors import UsageError
    from sgdcli.training.interrupts import graceful_stop
    from sgdcli.training.sweep import exit_status

    if not sweep and seeds is None:
        raise UsageError("--executor and --scheduler say where a sweep's members train: give --sweep KEY=V1,V2,... "
                         "or --seeds K")
    if run_dir is not None:
        raise UsageError("--run-dir names one run; a sweep's members are named after their values (use --runs-dir)")
    if executor is SweepExecutor.dask:
        if scheduler is None:
            raise UsageError("--executor dask needs --scheduler tcp://HOST:PORT, the address a running Dask "
                             "scheduler printed when it started (`dask scheduler`)")
        if jobs != 1:
            raise UsageError(f"--jobs is for --executor local, received --jobs {jobs} with --executor dask: on a "
                             "cluster each worker thread trains one member at a time (choose with `dask worker "
                             "--nthreads`)")
    elif scheduler is not None:
        raise UsageError("--scheduler is for --executor dask; add --executor dask to train the members on that cluster")
    finished = []
    with graceful_stop() as stop:
        result = api.sweep(config, overrides, sweep, runs_dir=runs_dir, jobs=jobs, name=name, plot=plot,
                           on_done=lambda member: (finished.append(member), render.sweep_member(member)),
                           should_stop=stop, seeds=seeds, scheduler=scheduler, on_note=render.warning,
                           overwrite=overwrite)
    render.comparison(result.rows, result.differing, "table", str(result.plot) if result.plot else None)
    if result.sweep_plot is not None:
        render.err.print(f"heatmap: {result.sweep_plot}")
    if stop():
        return 128 + stop.signal
    return exit_status(finished)
