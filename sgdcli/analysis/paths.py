"""Paths of several runs of one 2-parameter objective (e.g. least_squares in three batch modes) on one
contour map of its exact loss: what `sgdcli compare` draws for such runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sgdcli import plots
from sgdcli.config.loading import load_config
from sgdcli.config.schema import ObjectiveConfig
from sgdcli.errors import ConfigError
from sgdcli.runs.directory import RunRecord
from sgdcli.training import build


def shared_objective(records: list[RunRecord]) -> ObjectiveConfig | None:
    """The config of the first run when every run descended the same 2-parameter objective (its
    section equal apart from `start`), else None."""
    if not records or any(not r.config or "objective" not in r.config for r in records):
        return None
    sections = {json.dumps({k: v for k, v in r.config["objective"].items() if k != "start"}, sort_keys=True)
                for r in records}
    if len(sections) != 1:
        return None
    try:
        config = load_config(records[0].config)
    except ConfigError:
        return None
    return config if isinstance(config, ObjectiveConfig) and len(config.objective.start) == 2 else None


def path_of(record: RunRecord) -> np.ndarray:
    """(steps + 1, 2): the start from the run's config, then w0, w1 of each metrics row."""
    rows = [(r["w0"], r["w1"]) for r in record.metrics if r.get("w0") is not None and r.get("w1") is not None]
    return np.array([tuple(record.config["objective"]["start"]), *rows], dtype=np.float64)


def overlay(records: list[RunRecord], out: Path) -> Path | None:
    """Draw every run's path on the exact loss contour of their shared objective into `out`; None (and
    nothing written) when the runs do not share one."""
    config = shared_objective(records)
    if config is None:
        return None
    objective = build.build_objective(config.objective)
    paths = [(r.name, path_of(r)) for r in records]
    return plots.objective_paths(objective, paths, f"{config.objective.type}: {len(paths)} runs on the exact loss",
                                 out)
