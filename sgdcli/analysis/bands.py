"""Runs that differ only in their seed, taken together: a mean curve with a min–max band, and
mean ± standard deviation in the table (`sgdcli compare --band`, `sgdcli train --seeds K`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli import plots
from sgdcli.fileio import atomic_write
from sgdcli.runs.directory import RunRecord

IGNORED = {"name", "seed"}  # what may differ inside a group


@dataclass
class Group:
    """Runs with one config apart from name and seed."""

    label: str
    records: list[RunRecord]
    config: dict[str, Any]  # flattened, without name and seed

    @property
    def seeds(self) -> list[Any]:
        return [(r.config or {}).get("seed") for r in self.records]


def group(records: list[RunRecord], flat: list[dict[str, Any]]) -> list[Group]:
    """Group runs whose flattened configs agree on every key but name and seed; first-seen order."""
    groups: dict[str, Group] = {}
    for record, config in zip(records, flat):
        rest = {k: v for k, v in config.items() if k not in IGNORED}
        key = json.dumps(rest, sort_keys=True, default=str) if config else f"unreadable:{record.name}"
        if key not in groups:
            groups[key] = Group(_label(record), [], rest)
        groups[key].records.append(record)
    return list(groups.values())


def _label(record: RunRecord) -> str:
    name = (record.config or {}).get("name") or record.name
    seed = (record.config or {}).get("seed")
    return name.removesuffix(f"-seed-{seed}") if seed is not None else name


def mean_spread(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation (ddof = 1; None for one value, where it is undefined), count) of the
    finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None, 0
    spread = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return float(np.mean(finite)), spread, len(finite)


def row(item: Group, per_run_rows: list[dict[str, Any]], differing: list[str]) -> dict[str, Any]:
    """One table row per group: the differing keys, statuses, and each numeric column as 'mean ± sd' (a group of
    one run: its value alone, no spread)."""
    out: dict[str, Any] = {"run": f"{item.label} ({len(item.records)} seeds: "
                                  f"{', '.join(str(s) for s in item.seeds)})"}
    out.update({key: item.config.get(key) for key in differing if key not in IGNORED})
    statuses = [r.get("status") for r in per_run_rows]
    out["status"] = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    for column in per_run_rows[0]:
        if column in out or column in ("run", "problems") or column in differing:
            continue
        values = [r.get(column) for r in per_run_rows]
        if all(isinstance(v, (int, float)) or v is None for v in values):
            mean, spread, count = mean_spread(values)
            spread_text = "" if spread is None else f" ± {spread:.2g}"
            out[column] = None if mean is None else f"{mean:.4g}{spread_text}" + (
                f" (of {count})" if count < len(values) else "")
    out["problems"] = "; ".join(filter(None, (r.get("problems") for r in per_run_rows)))
    return out


def band(rows_per_run: list[list[dict]], x_column: str, column: str) -> tuple[np.ndarray, ...]:
    """(x, mean, min, max, count) over the runs at each x value that at least one run has; a run
    contributes at an x only where its value is finite (a diverged or shorter run stops contributing)."""
    values: dict[float, list[float]] = {}
    for rows in rows_per_run:
        for r in rows:
            x, y = r.get(x_column), r.get(column)
            if x is not None and y is not None and math.isfinite(y):
                values.setdefault(x, []).append(y)
    xs = np.array(sorted(values))
    stacks = [np.array(values[x]) for x in xs]
    return (xs, np.array([s.mean() for s in stacks]), np.array([s.min() for s in stacks]),
            np.array([s.max() for s in stacks]), np.array([len(s) for s in stacks]))


def plot(groups: list[Group], x_column: str, x_label: str, out: Path) -> Path:
    """Per group: mean training loss (solid) and validation loss (dashed), each with its min–max band."""

    def draw(axes: Any) -> None:
        for index, item in enumerate(groups):
            colour = f"C{index % 10}"
            rows = [r.metrics for r in item.records]
            train_column = "train_loss_full" if any(r.get("train_loss_full") is not None
                                                    for rs in rows for r in rs) else "train_loss"
            for column, style, kind in ((train_column, "-", "train"), ("val_loss", "--", "val")):
                xs, mean, low, high, _ = band(rows, x_column, column)
                if len(xs):
                    axes.fill_between(xs, low, high, color=colour, alpha=0.18, linewidth=0)
                    axes.plot(xs, mean, style, color=colour,
                              label=f"{item.label} ({kind}, mean of {len(item.records)}, min–max band)")
        axes.set_xlabel(x_label)
        axes.set_ylabel("loss")
        axes.set_yscale(_scale(groups))
        axes.set_title("runs that differ only in seed: mean and min–max band")

    atomic_write(out, plots.png(draw))
    return out


def _scale(groups: list[Group]) -> str:
    values = [r.get("train_loss") for g in groups for rec in g.records for r in rec.metrics]
    values = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return "log" if values and max(values) / min(values) > 30 else "linear"


def aggregate(records: list[RunRecord], flat: list[dict[str, Any]], rows: list[dict[str, Any]],
              differing: list[str]) -> tuple[list[Group], list[dict[str, Any]]]:
    """Groups and their table rows from compare's per-run rows (same order as `records`)."""
    groups = group(records, flat)
    by_run: dict[str, dict[str, Any]] = {r["run"]: r for r in rows}
    return groups, [row(g, [by_run[r.name] for r in g.records], differing) for g in groups]
