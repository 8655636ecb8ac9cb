"""Terminal output with rich: training progress, summaries, evaluation reports, comparison tables."""

from __future__ import annotations

import csv
import io
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
)
from rich.table import Table

from sgdcli import strict_json
from sgdcli.analysis.run_labels import run_labels, short_keys
from sgdcli.cli.progress import ProgressState

# Off a terminal (logs, pipes, CI) rich would wrap at 80 columns; tables stay at their natural width.
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 240)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"
    return str(value)


def plain(text: str) -> None:
    """Machine-readable output (JSON, CSV, YAML): exact text, never wrapped or styled."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


# Messages are never wrapped (soft_wrap): a path or a command in one pastes as one line.
def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def wrote(path: Any, what: str) -> None:
    err.print(f"wrote {escape(str(path))}: {escape(what)}", soft_wrap=True)


def warning(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


# ---------------------------------------------------------------- training
class TrainingReporter:
    """Progress bar per epoch on a terminal; one plain line per epoch otherwise (logs, CI)."""

    def __init__(self, console: Console = err) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.info: dict[str, Any] = {}
        self._last_draw = 0.0
        self.state: ProgressState | None = None

    def warn(self, message: str) -> None:
        warning(message)

    def start(self, info: dict[str, Any]) -> None:
        self.info = info
        self._started = (time.monotonic(), info["position"]["epoch"])
        if info.get("resumed_from") is not None:
            position = info["position"]
            where = (f"the end of epoch {position['epoch']}" if not position["batch"] else
                     f"epoch {position['epoch'] + 1}, batch {position['batch'] + 1}" if position["batch"] < info["updates_per_epoch"]
                     else f"epoch {position['epoch'] + 1}'s measurement (its {position['batch']} updates done)")
            self.console.print(f"resuming [bold]{info['name']}[/] at {where} (update {position['updates']})")
        self.console.print(
            f"training [bold]{info['name']}[/]: {info['train_samples']} training / {info['val_samples']} validation "
            f"samples, {info['parameters']} parameters, batch {info['batch_size']} "
            f"({info['updates_per_epoch']} updates per epoch), {info['epochs']} epochs"
            + (f", data-parallel on {info['processes']} MPI processes{_threads_each(info.get('blas_threads'))}"
               if info.get("processes", 1) > 1 else ""))
        if self.live:
            position = info["position"]
            self.state = ProgressState(info["epochs"], info["updates_per_epoch"], position["updates"], time.monotonic(),
                                       mean_loss=info["batch_size"] == 1, epoch=position["epoch"] + 1)
            self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[eta]}"),
                                     console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("", total=info["updates_per_epoch"], completed=position["batch"],
                                               epoch=f"{position['epoch'] + 1}/{info['epochs']}", loss="", eta="")

    def batch(self, done: int, total: int, loss: float) -> None:
        if self.progress is None or self.state is None:
            return
        now = time.monotonic()
        fields = self.state.fields(done, loss, now)
        if now - self._last_draw > 0.1 or done == total:  # redraw at most 10 times a second
            self._last_draw = now
            self.progress.update(self.task, completed=done, **fields)

    def epoch(self, row: dict[str, Any]) -> None:
        parts = [f"epoch {row['epoch']}/{self.info.get('epochs', '?')}", f"batch loss {_num(row['train_loss'])}"]
        for label, loss, accuracy in (("train", "train_loss_full", "train_accuracy"), ("val", "val_loss", "val_accuracy")):
            if row.get(loss) is not None:
                parts.append(f"{label} {_num(row[loss])}" + (f" acc {_num(row[accuracy])}" if row.get(accuracy) is not None
                                                              else ""))
        parts.append(f"lr {_num(row['learning_rate'])}")
        parts.append(f"{row['seconds']:.2f}s")
        eta = self._eta(row["epoch"])
        parts += [eta] if eta else []
        line = " | ".join(parts)
        if self.progress is not None and self.state is not None:
            self.progress.console.print(line)
            self.state.new_epoch(row["epoch"] + 1, time.monotonic())
            self.progress.reset(self.task, total=self.info["updates_per_epoch"],
                                epoch=f"{row['epoch'] + 1}/{self.info['epochs']}", loss="", eta="")
        else:
            self.console.print(line)

    def _eta(self, epoch: int) -> str:
        """The whole run's estimated wall time and what is left of it, from the mean wall time of the
        epochs done in this process (evaluation and checkpoints included); after a resume the whole run
        counts the earlier segments' wall time too (`wall_before`); '' once the run is done."""
        started, first = self._started
        done, planned = epoch - first, self.info.get("epochs", epoch)
        if done < 1 or epoch >= planned:
            return ""
        elapsed = time.monotonic() - started
        left = elapsed / done * (planned - epoch)
        return f"run ~{_duration(self.info.get('wall_before', 0.0) + elapsed + left)}, {_duration(left)} left"

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _threads_each(count: int | None) -> str:
    return "" if count is None else f" ({count} BLAS thread{'' if count == 1 else 's'} each)"


def _duration(seconds: float) -> str:
    """3.2 -> '3s', 200 -> '3m 20s', 25_320 -> '7h 02m', 200_000 -> '2d 07h'."""
    seconds = round(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def training_summary(summary: dict[str, Any], run_dir: str) -> None:
    table = Table(title=f"{summary['name']}: {summary['status']}", show_header=True)
    table.add_column("")
    table.add_column("final", justify="right")
    table.add_column(f"best (epoch {summary.get('best_epoch') or '-'})", justify="right")
    final, best = summary.get("final") or {}, summary.get("best") or {}
    for key in ("train_loss", "train_loss_full", "val_loss", "train_accuracy", "val_accuracy"):
        if final.get(key) is not None or best.get(key) is not None:
            table.add_row(key, _num(final.get(key)), _num(best.get(key)))
    table.add_row("epochs", str(summary["epochs"]), "")
    table.add_row("updates", str(summary["updates"]), "")
    per_epoch = summary.get("seconds_per_epoch")
    table.add_row("time", f"{summary['wall_seconds']:.2f} s wall, {_num(per_epoch)} s training per epoch", "")
    err.print(table)
    if summary.get("message"):
        (warning if summary["status"] != "completed" else err.print)(summary["message"])
    plain(run_dir)


def validation_plan(plan) -> None:
    """What `validate` found training would use (on stderr: stdout holds the resolved config)."""
    if plan is None:
        err.print("ok")
        return
    classes = f", {len(plan.class_names)} classes" if plan.class_names else f", {plan.outputs} outputs"
    err.print(f"ok: {plan.train_samples} training / {plan.val_samples} validation samples of {escape(plan.source)}, "
              f"{plan.features} features{classes}, batch {plan.batch_size} ({plan.updates_per_epoch} updates per "
              f"epoch); training needs {plan.memory.describe()}", highlight=False)


def sweep_member(member) -> None:
    """One line as each member of a sweep finishes."""
    colour = {"completed": "green", "diverged": "yellow", "interrupted": "yellow"}.get(member.status, "red")
    where = member.run_dir or member.message or ""
    err.print(f"[{colour}]{member.status:>11}[/] {escape(member.name)}  {escape(str(where))}", highlight=False)


# ---------------------------------------------------------------- evaluation
def evaluation(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        plain(strict_json.dumps(report))
        return
    out.print(f"{report['checkpoint']} (epoch {report['epoch']}) on {report['data']} [{report['split']}], "
              f"{report['samples']} samples", markup=False)
    table = Table(show_header=False)
    table.add_row(f"loss ({report['loss_type']})", _num(report["loss"]))
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "mse", "mae", "r2"):
        if key in report:
            table.add_row(key, _num(report[key]))
    out.print(table)
    if "per_class" in report:
        classes = Table(title="per class")
        for column in ("class", "precision", "recall", "f1", "support"):
            classes.add_column(column, justify="left" if column == "class" else "right")
        for row in report["per_class"]:
            classes.add_row(escape(row["class"]), _num(row["precision"]), _num(row["recall"]), _num(row["f1"]),
                            str(row["support"]))
        out.print(classes)
        confusion = Table(title="confusion matrix (rows: true class, columns: predicted)")
        confusion.add_column("")
        for name in report["class_names"]:
            confusion.add_column(escape(name[:10]), justify="right")
        for name, counts in zip(report["class_names"], report["confusion_matrix"]):
            confusion.add_row(escape(name), *(str(c) for c in counts))
        out.print(confusion)


# ---------------------------------------------------------------- comparison
def comparison(rows: list[dict[str, Any]], differing: list[str], fmt: str, plot: str | None) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if not any(row.get("problems") for row in rows):
        columns = [c for c in columns if c != "problems"]
    if fmt == "json":
        plain(strict_json.dumps({"differing": differing, "runs": rows, "plot": plot}))
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[("" if row.get(c) is None else row.get(c)) for c in columns] for row in rows])
        plain(buffer.getvalue())
        return
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
        plain("\n".join(lines))
    else:
        # The terminal table keeps the columns a reader compares; problems go below it.
        shown = [c for c in columns if c not in ("run", "problems", "best_epoch_train_loss", "best_epoch_train_accuracy")]
        names = [str(row.get("run")) for row in rows]
        labels = run_labels(names, rows, differing)
        out.print(_runs_table(rows, labels, shown, differing))
        if labels != names:
            for label, name in zip(labels, names):
                out.print(f"  {label}: {name}", markup=False, highlight=False, soft_wrap=True)
        for row in rows:
            if row.get("problems"):
                err.print(f"[yellow]{escape(str(row['run']))}:[/] {escape(row['problems'])}", soft_wrap=True)
    if plot:
        err.print(f"plot: {plot}")


def _runs_table(rows: list[dict[str, Any]], labels: list[str], shown: list[str], differing: list[str]) -> Table:
    """One row per run when that fits the terminal, else one column per run. Cells fold, never cut."""
    short = short_keys(differing)
    headers = {c: short[c] if c in differing else c.replace("_", " ") for c in shown}
    title = "runs compared" + (f" (differing: {', '.join(differing)})" if differing else "")
    wide = Table(title=title)
    wide.add_column("run", overflow="fold")
    for column in shown:
        wide.add_column(escape(headers[column]), overflow="fold",
                        justify="left" if column == "status" or column in differing else "right")
    for label, row in zip(labels, rows):
        wide.add_row(escape(label), *(escape(_cell(row.get(c))) for c in shown))
    if out.measure(wide, options=out.options.update_width(10**6)).maximum <= out.width:  # its natural width
        return wide
    tall = Table(title=title)
    tall.add_column("", overflow="fold")
    for label in labels:
        tall.add_column(escape(label), justify="right", overflow="fold")
    for column in shown:
        tall.add_row(escape(headers[column]), *(escape(_cell(row.get(column))) for row in rows))
    return tall


def _cell(value: Any) -> str:
    return _num(value) if isinstance(value, float) else ("-" if value is None else str(value))


# ---------------------------------------------------------------- diagnostics
def gradient_checks(checks) -> None:
    table = Table(title="gradient check: backprop vs central differences (float64)")
    for column in ("tensor", "checked", "max abs error", "max rel error", "worst index", "backprop", "numeric", ""):
        table.add_column(column, justify="left" if column in ("tensor", "worst index", "") else "right")
    for check in checks:
        table.add_row(check.name, str(check.checked), f"{check.max_abs_error:.2e}", f"{check.max_rel_error:.2e}",
                      str(check.worst_index), f"{check.analytic:.8g}", f"{check.numeric:.8g}",
                      "[green]pass[/]" if check.passed else "[bold red]FAIL[/]")
    out.print(table)
    failed = [check.name for check in checks if not check.passed]
    if failed:
        error(f"the gradient of {', '.join(failed)} does not match its finite differences")
    else:
        out.print(f"all {len(checks)} checks passed")


def optimizer_reference(entries, weight_decay: str, effective_step: str) -> None:
    for entry in entries:
        defaults = ", ".join(f"{k}={v}" for k, v in entry.defaults.items())
        out.print(f"[bold]{entry.type}[/]  ({defaults})")
        out.print(entry.rule, markup=False, highlight=False)
        out.print(f"[dim]{entry.conventions}[/]\n")
    out.print(weight_decay)
    out.print(effective_step)


def landscape(result, csv_path, png_path) -> None:
    lowest = int(result.losses.argmin())
    out.print(f"loss along {result.direction} ({result.x_label}) at {result.checkpoint}, on {result.data}", markup=False)
    out.print(f"at the checkpoint (α = {result.checkpoint_alpha:g}): loss {result.checkpoint_loss:.6g}, "
              f"slope {result.checkpoint_slope:.6g}; "
              f"lowest {float(result.losses[lowest]):.6g} at {result.x[lowest]:.4g}", markup=False)
    err.print(f"wrote {csv_path} and {png_path}")
