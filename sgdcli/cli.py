"""The command line: each command parses, calls one library function, renders. No numpy here."""

from __future__ import annotations

import functools
import signal
from enum import Enum
from pathlib import Path
from typing import Callable, List, Optional

import typer

from sgdcli.errors import SgdcliError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train neural networks with gradient descent from YAML configs.\n\n"
    "Exit status: 0 success, 2 bad usage or config, 3 bad data, 4 bad checkpoint or run directory, "
    "5 training diverged, 6 disk full, 130 interrupted.",
)

INTERRUPTED = 130
DIVERGED = 5


def _boundary(command: Callable) -> Callable:
    """Our own errors become one message on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from sgdcli import render

        try:
            return command(*args, **kwargs)
        except SgdcliError as exc:
            render.error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            render.error("interrupted")
            raise typer.Exit(INTERRUPTED) from None

    return wrapper


class Split(str, Enum):
    test = "test"
    val = "val"
    train = "train"


class XAxis(str, Enum):
    epoch = "epoch"
    step = "step"
    updates = "updates"
    samples = "samples"
    seconds = "seconds"


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


SET_HELP = "Override a config value by dotted path, e.g. optimizer.momentum=0.9 or model.layers.0.units=128 (repeatable)."


@app.command()
@_boundary
def train(
    config: Optional[Path] = typer.Argument(None, help="Experiment config (YAML). Optional with --resume."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP, metavar="KEY=VALUE"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where run directories are created."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: the config's name)."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                          help="Continue this run from its newest valid checkpoint, exactly where it "
                                               "stopped. A CONFIG or --set may only raise training.epochs."),
) -> None:
    """Train a model; writes runs/<name>-<time>/ and prints its path."""
    from sgdcli import api, render
    from sgdcli.errors import UsageError
    from sgdcli.interrupts import graceful_stop

    if config is None and resume is None:
        raise UsageError("give a CONFIG file to train, or --resume RUN_DIR")
    if resume is not None and name is not None:
        raise UsageError("--name cannot rename a run being resumed")
    reporter = render.TrainingReporter()
    try:
        with graceful_stop() as stop:
            if resume is not None:
                experiment = api.load_config(config, set_) if config is not None else None
                result = api.resume(resume, experiment, set_, reporter=reporter, should_stop=stop)
            else:
                experiment = api.load_config(config, set_)
                result = api.train(experiment, runs_dir=runs_dir, name=name, reporter=reporter, should_stop=stop)
    finally:
        reporter.close()
    render.training_summary(result.summary, str(result.run_dir))
    if result.status == "diverged":
        raise typer.Exit(DIVERGED)
    if result.status == "interrupted":
        raise typer.Exit(INTERRUPTED if stop.signal in (None, signal.SIGINT) else 128 + stop.signal)


@app.command("eval")
@_boundary
def evaluate(
    target: Path = typer.Argument(..., help="A run directory (its best checkpoint, else last) or a checkpoint file."),
    data: Optional[Path] = typer.Option(None, "--data", help="Evaluate on this file (same format as the training data)."),
    split: Optional[Split] = typer.Option(None, "--split", help="Which split of the run's own data [default: test if the config has data.test_file, else val]."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Loss and metrics of a trained model on held-out data."""
    from sgdcli import api, render

    report = api.evaluate(target, data=data, split=split.value if split else None)
    render.evaluation(report, as_json)


@app.command()
@_boundary
def compare(
    runs: List[Path] = typer.Argument(..., help="Run directories."),
    x: XAxis = typer.Option(XAxis.epoch, "--x", help="x axis of the plot (step and updates are the same)."),
    plot: Path = typer.Option(Path("compare.png"), "--plot", help="Where to write the overlaid loss curves (PNG)."),
    fmt: Format = typer.Option(Format.table, "--format", help="Table format."),
) -> None:
    """Side-by-side table of runs (only the config keys that differ) and overlaid loss curves."""
    from sgdcli import api, render

    result = api.compare(runs, x=x.value, plot=plot)
    render.comparison(result.rows, result.differing, fmt.value, str(result.plot) if result.plot else None)


@app.command()
@_boundary
def validate(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP, metavar="KEY=VALUE"),
) -> None:
    """Check a config without training; prints the resolved config (defaults filled in)."""
    from sgdcli import api, render
    from sgdcli.yamlio import dump_yaml

    render.plain(dump_yaml(api.load_config(config, set_).to_dict()))


def main() -> None:
    # Past a file-size limit, fail the write (EFBIG -> exit 6, previous files intact) instead of
    # letting SIGXFSZ kill the process mid-write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    app()
