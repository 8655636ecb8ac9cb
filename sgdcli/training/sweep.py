"""Sweeps: every combination of listed values, each a normal `sgdcli train` run in its own process."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sgdcli.engine import workers
from sgdcli.errors import UsageError
from sgdcli.training import interrupts

STATUS_BY_EXIT = {0: "completed", 5: "diverged", 130: "interrupted", 143: "interrupted"}


@dataclass
class Member:
    """One combination of the sweep and what became of it."""

    name: str
    overrides: list[str]  # the combination as --set KEY=VALUE arguments
    run_dir: Path | None = None
    status: str = "pending"
    message: str | None = None
    exit_code: int | None = None  # the member's `sgdcli train` exit status, once it has finished


def parse(sweeps: list[str]) -> list[tuple[str, list[str]]]:
    """['training.batch.mode=sgd,full', ...] -> [('training.batch.mode', ['sgd', 'full']), ...]. Values are split
    at the commas outside brackets, braces and quotes, so a value may be a YAML flow list or mapping:
    'optimizer.schedule={type: step, every_epochs: 1},{type: cosine}' has two."""
    parsed = []
    for item in sweeps:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in split_values(values)] if sep else []
        if not sep or not key.strip() or not choices or any(not v for v in choices):
            raise UsageError(f"--sweep expects KEY=V1,V2,... such as training.batch.mode=sgd,full, received {item!r}")
        if key.strip() in (k for k, _ in parsed):
            raise UsageError(f"--sweep names {key.strip()} twice; list all its values once")
        parsed.append((key.strip(), choices))
    return parsed


def split_values(text: str) -> list[str]:
    """`text` split at its top-level commas: not inside [ ] or { }, nor inside '...' or "..." (YAML's flow
    collections and quoted scalars; a quote opens a scalar only where YAML's would: first in a value, or after
    [ { , or :, so "it's" is a plain value). UsageError for an unclosed or unmatched bracket or quote."""
    values, depth, quote, start, previous, escaped = [], [], None, 0, ",", False
    pairs = {"]": "[", "}": "{"}
    for at, char in enumerate(text):
        if escaped:  # the second quote of '' (a quote inside '...') or the character after \ inside "..."
            escaped = False
        elif quote:
            escaped = (char == "\\" and quote == '"') or (char == "'" == quote and text[at + 1:at + 2] == "'")
            quote = None if char == quote and not escaped else quote
        elif char in "'\"" and previous in "[{,:":
            quote = char
        elif char in "[{":
            depth.append(char)
        elif char in pairs:
            if not depth or depth.pop() != pairs[char]:
                raise UsageError(f"--sweep: an unmatched {char!r} at character {at + 1} of {text!r}")
        elif char == "," and not depth:
            values.append(text[start:at])
            start = at + 1
        previous = char if not char.isspace() else previous
    if quote or depth:
        raise UsageError(f"--sweep: {'a quote' if quote else repr(depth[-1])} is never closed in {text!r}")
    return [*values, text[start:]]


def members(base_name: str, sweeps: list[tuple[str, list[str]]]) -> list[Member]:
    """The Cartesian product, each named after its values: digits-mlp-mode-sgd-learning_rate-0.1."""
    leaves = [key.rsplit(".", 1)[-1] for key, _ in sweeps]
    labels = [leaf if leaves.count(leaf) == 1 else key for leaf, (key, _) in zip(leaves, sweeps)]
    result = []
    for combination in itertools.product(*(values for _, values in sweeps)):
        parts = [f"{label}-{re.sub(r'[^A-Za-z0-9._-]', '_', value)}" for label, value in zip(labels, combination)]
        name = "-".join([base_name, *parts])[:100]
        result.append(Member(name, [f"{key}={value}" for (key, _), value in zip(sweeps, combination)]))
    return result


def run(config: Path, overrides: list[str], sweep_members: list[Member], runs_dir: Path, jobs: int,
        on_done: Callable[[Member], None] | None = None, should_stop: Callable[[], bool] | None = None) -> None:
    """Train every member (at most `jobs` at a time); a failed or diverged member is recorded, not fatal."""
    if jobs < 1:
        raise UsageError(f"--jobs expects a whole number of at least 1, received {jobs}")
    with interrupts.deferring(should_stop):  # the members get the signal too; wait for them to save
        _run(config, overrides, sweep_members, runs_dir, jobs, on_done, should_stop)


def _run(config: Path, overrides: list[str], sweep_members: list[Member], runs_dir: Path, jobs: int,
         on_done: Callable[[Member], None] | None, should_stop: Callable[[], bool] | None) -> None:
    waiting = list(sweep_members)
    running: list[tuple[Member, subprocess.Popen, IO[str], IO[str]]] = []
    while waiting or running:
        while waiting and len(running) < jobs and not (should_stop and should_stop()):
            member = waiting.pop(0)
            command = [sys.executable, "-m", "sgdcli", "train", str(config), "--runs-dir", str(runs_dir),
                       "--name", member.name]
            for item in [*overrides, *member.overrides]:
                command += ["--set", item]
            # Output goes to files, not pipes: a chatty child can never block on a full pipe.
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                       env=member_environment(min(jobs, len(sweep_members))))
            running.append((member, process, out, err))
        if should_stop and should_stop():
            for member in waiting:
                member.status = "not started"
            waiting.clear()
        for entry in list(running):
            member, process, out, err = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            out.seek(0)
            err.seek(0)
            record(member, process.returncode, out.read(), err.read())
            out.close()
            err.close()
            if on_done:
                on_done(member)
        time.sleep(0.05)


def member_environment(jobs: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a member of a sweep running `jobs` members at once: this process's, with
    OpenBLAS (and OpenMP) on the usable cores divided by `jobs` (``workers.threads_each``: at least 1), unless
    the user has given OpenBLAS a count (``workers.user_threads``: theirs is passed on; an empty, 0 or
    non-numeric value, which OpenBLAS reads as "every core", is replaced). Two members on two cores,
    each with a two-thread BLAS pool, took 4-5x longer an epoch than each alone (their idle BLAS threads
    spin on the cores the other's need; the element-wise updates on OpenBLAS's threads, engine/pool,
    ~20x), one thread each about as long as alone."""
    environment = dict(os.environ if environ is None else environ)
    threads = workers.threads_each(jobs, environment) if jobs > 1 else None
    if threads is not None:
        environment["OPENBLAS_NUM_THREADS"] = environment["OMP_NUM_THREADS"] = str(threads)
    return environment


def record(member: Member, returncode: int, out: str, err: str) -> None:
    """What a member's `sgdcli train` earned, from its exit status, stdout (its run directory last) and
    stderr (its `error:` and `warning:` lines)."""
    lines = [line for line in out.splitlines() if line.strip()]
    if lines and Path(lines[-1]).is_dir():
        member.run_dir = Path(lines[-1])
    member.exit_code = returncode
    member.status = STATUS_BY_EXIT.get(returncode, "failed")
    errors = [line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error: ")]
    warnings = [line.removeprefix("warning: ") for line in err.splitlines() if line.startswith("warning: ")]
    if member.status == "failed":
        member.message = errors[-1] if errors else f"exit status {returncode}"
    elif member.status != "completed":
        member.message = (warnings or errors or [None])[-1]


def exit_status(finished: list[Member]) -> int:
    """A sweep's exit status, whatever order its members finished in: 0 when every member
    completed; else a failed member's status (2/3/4/6: its config, data, checkpoint or disk error,
    1 for a crash, 128 + N when killed by signal N; the lowest, if they differ), else 5 when a
    member diverged."""
    codes = {member.exit_code if member.exit_code >= 0 else 128 - member.exit_code
             for member in finished if member.exit_code}
    failed = codes - {5}
    return min(failed) if failed else (5 if codes else 0)
