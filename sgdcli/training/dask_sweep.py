"""Sweeps on a Dask distributed cluster: the checks before anything is submitted (the scheduler, its
workers, the shared runs folder, the data), one task per member, and the sweep stopped on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sgdcli import fileio
from sgdcli.config.loading import load_config
from sgdcli.config.yamlio import dump_yaml
from sgdcli.errors import DataError, SgdcliError, UsageError
from sgdcli.training import dask_member, interrupts
from sgdcli.training.sweep import Member, record

CONNECT_SECONDS = 10  # a scheduler that does not answer within this is reported, not waited for
WORKERS_SECONDS = 10  # how long a scheduler with no worker is given to get one
ALONE_SECONDS = 10  # a cluster without a worker for this long is reported (Dask itself waits in silence)
RETRIES = 2  # a member task that raised is run again (a worker that dies is Dask's allowed-failures)
START_HINT = ("start one with `dask scheduler` on that machine (it prints its address) and workers with `dask "
              "worker tcp://HOST:8786` on the others; see README \"Sweeps on a Dask cluster\"")


def distributed_module():
    """`distributed`, imported only when a sweep uses it; UsageError (exit 2) naming the extra if missing."""
    try:
        import distributed
    except ImportError:
        raise UsageError("--executor dask needs Dask's distributed scheduler, which is not installed: "
                         "pip install 'sgdcli[dask]'") from None
    return distributed


def run(config: Path, overrides: list[str], members: list[Member], runs_dir: Path, scheduler: str,
        on_done: Callable[[Member], None] | None = None, should_stop: Callable[[], bool] | None = None,
        on_note: Callable[[str], None] | None = None) -> None:
    """Train every member as one task on the cluster at `scheduler`; as `sweep.run`, a failed member is
    recorded, not fatal. Checks first, exit 2 with nothing submitted: the scheduler answers and has a
    worker; every worker sees the runs folder (a probe file) and every member's data files.

    `on_note` hears when the cluster has had no worker for ALONE_SECONDS (the sweep then waits for
    workers to join, as Dask does) and when workers are back.

    Each member's run directory is fixed here (`<name>-<YYYYmmdd-HHMMSS>` under `runs_dir`, the time the
    sweep started) so a task Dask retries after its worker died continues that run with `--resume`.
    """
    distributed = distributed_module()
    runs_dir = runs_dir.absolute()  # the workers' view: the same absolute path on the shared folder
    specs = _specs(config, overrides, members, runs_dir, on_done)
    if not specs:  # every member failed already (its config or data): nothing to submit
        return
    client = connect(distributed, scheduler)
    try:
        check_workers(client, runs_dir, sorted({path for spec in specs.values() for path in spec.pop("paths")}))
        with interrupts.deferring(should_stop):  # a signal sets the flag: the members are stopped, then reported
            _run(distributed, client, members, specs, on_done, should_stop, Workers(client, on_note))
    finally:
        client.close()


def _specs(config: Path, overrides: list[str], members: list[Member], runs_dir: Path,
           on_done: Callable[[Member], None] | None) -> dict[str, dict[str, Any]]:
    """Each member's task input: its resolved config (data paths absolute, the name its own) as YAML text
    and its run directory. A member whose config is invalid is recorded as failed, as a local one is."""
    specs, stamp = {}, time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):  # never a directory that exists: a retry would take it for its own
        suffix = stamp if attempt == 1 else f"{stamp}-{attempt}"
        if not any(os.path.lexists(runs_dir / f"{m.name}-{suffix}") for m in members):
            break
    for member in members:
        try:  # a config error, or data missing here too, fails the member as a local sweep does
            resolved = load_config(config, [*overrides, *member.overrides])
            for path in _paths(resolved):  # (not as a worker's shared-folder problem)
                with fileio.reading(path, DataError, "data"):
                    os.stat(path)
        except SgdcliError as exc:
            record(member, exc.exit_code, "", f"error: {exc}")
            if on_done:
                on_done(member)
            continue
        specs[member.name] = {"name": member.name, "run_dir": str(runs_dir / f"{member.name}-{suffix}"),
                              "config": dump_yaml({**resolved.to_dict(), "name": member.name}),
                              "source": str(config.absolute()), "paths": [str(path) for path in _paths(resolved)]}
    return specs


def _paths(section: Any) -> list[Path]:
    """Every path a config names (data files and folders), already absolute."""
    if isinstance(section, Path):
        return [section]
    if isinstance(section, (list, tuple)):
        return [path for item in section for path in _paths(item)]
    fields = getattr(type(section), "model_fields", None)
    if fields is None:
        return []
    return [path for key in fields for path in _paths(getattr(section, key))]


def connect(distributed, address: str):
    """A Client of the scheduler at `address`, which has at least one worker; UsageError (exit 2) naming
    the address otherwise, after at most CONNECT_SECONDS + WORKERS_SECONDS, never a hang."""
    address = address.strip()
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if parts.scheme != "tcp" or not host or not port or parts.path.strip("/") or parts.query or parts.fragment:
        raise UsageError(f"--scheduler: expected tcp://HOST:PORT (the address `dask scheduler` prints), "
                         f"received {address!r}")
    address = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"  # a trailing / dropped
    try:  # a plain connection first: a closed port fails at once, where a Dask client retries until its timeout
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise UsageError(f"no Dask scheduler answers at {address} ({why}); {START_HINT}") from None
    try:  # then Dask's own handshake, bounded: a Client waits forever on a server that is not Dask
        kind = asyncio.run(asyncio.wait_for(_identity(distributed, address), CONNECT_SECONDS)).get("type")
    except (OSError, TimeoutError, ValueError, TypeError, AttributeError):
        kind = None
    if kind != "Scheduler":
        what = f"a Dask {kind}" if kind else f"a server that does not answer as Dask does within {CONNECT_SECONDS} s"
        raise UsageError(f"{address} is {what}, not a Dask scheduler; {START_HINT}")
    client = distributed.Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
    try:
        client.wait_for_workers(1, timeout=WORKERS_SECONDS)
    except (OSError, TimeoutError):
        client.close()
        raise UsageError(f"the Dask scheduler at {address} has no workers (none joined within {WORKERS_SECONDS} s); "
                         f"start some with `dask worker {address}`") from None
    return client


async def _identity(distributed, address: str) -> dict:
    """What the Dask server at `address` says it is (`type`: Scheduler, Worker, Nanny)."""
    comm = await distributed.comm.connect(address, timeout=CONNECT_SECONDS)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


def check_workers(client, runs_dir: Path, paths: list[str]) -> None:
    """Every worker must see the runs folder (a file with a random token the driver writes there) and
    every data file; UsageError (exit 2) naming each worker and what it cannot see otherwise."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        name = f".sgdcli-probe-{secrets.token_hex(8)}"
        token = secrets.token_hex(16)
        (runs_dir / name).write_text(token, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{runs_dir}: cannot write the runs folder ({exc.strerror})") from None
    try:
        answers = client.run(dask_member.probe, str(runs_dir), name, token, paths, on_error="return")
    finally:
        (runs_dir / name).unlink(missing_ok=True)
    problems = [f"worker {worker}: " + "; ".join(found if isinstance(found, list) else [f"the check failed ({found})"])
                for worker, found in sorted(answers.items()) if found != []]
    if problems:
        raise UsageError("the Dask workers must see the runs folder and the data at the same paths as this "
                         f"machine, on a shared filesystem (NFS, a cluster filesystem): {'. '.join(problems)}")


class Workers:
    """Watches the number of workers while the sweep waits: says once when there has been none for
    ALONE_SECONDS (members wait, unstarted or to be retried, until one joins) and once when they are back.
    Asks the scheduler at most once a second (`Client.scheduler_info`, totals only)."""

    def __init__(self, client, on_note: Callable[[str], None] | None) -> None:
        self.client, self.on_note = client, on_note
        self.asked = self.alone_since = None  # monotonic seconds
        self.told = False

    def count(self) -> int:
        """The workers connected to the scheduler now (one round trip; no per-worker details)."""
        return int(self.client.scheduler_info(n_workers=0)["n_workers"])

    def check(self, now: float) -> None:
        """Called while the sweep waits; `now` in monotonic seconds."""
        if self.on_note is None or (self.asked is not None and now - self.asked < 1.0):
            return
        self.asked = now
        try:
            count = self.count()
        except Exception:  # noqa: BLE001 - the scheduler is unreachable now; the client reconnects or fails the futures
            return
        if count:
            if self.told:
                self.on_note(f"{count} Dask worker{'s' if count > 1 else ''} connected again: the sweep goes on")
            self.alone_since, self.told = None, False
        elif self.alone_since is None:
            self.alone_since = now
        elif not self.told and now - self.alone_since >= ALONE_SECONDS:
            self.told = True
            self.on_note(f"no Dask worker has been connected to {self.client.scheduler.address} for {ALONE_SECONDS} s: the sweep "
                         "waits for workers to join (`dask worker ADDRESS`); Ctrl-C stops it and leaves every "
                         "member resumable")


def _run(distributed, client, members: list[Member], specs: dict[str, dict[str, Any]],
         on_done: Callable[[Member], None] | None, should_stop: Callable[[], bool] | None, workers: Workers) -> None:
    stop = distributed.Event(f"sgdcli-stop-{secrets.token_hex(8)}", client=client)
    by_name = {member.name: member for member in members}
    futures = {client.submit(dask_member.run_member, {**spec, "stop": stop.name}, retries=RETRIES, pure=False,
                             key=f"sgdcli-{name}-{secrets.token_hex(4)}"): by_name[name] for name, spec in specs.items()}
    pending = distributed.as_completed(list(futures), loop=client.loop)
    stopping = False
    try:
        while not pending.is_empty():
            if not stopping and should_stop and should_stop():
                stopping = True
                stop.set()  # running members get SIGINT from their task and save a checkpoint
                _interrupt_now(client, stop.name)
                running = {key for keys in client.processing().values() for key in keys}
                client.cancel([future for future in futures if future.key not in running and not future.done()])
            if not pending.has_ready():
                workers.check(time.monotonic())
                time.sleep(0.1)
                continue
            for future in pending.next_batch(block=False):
                member = futures[future]
                _finish(member, future, specs[member.name]["run_dir"])
                if on_done:
                    on_done(member)
    except BaseException:
        stop.set()  # the driver failed: no task starts another member, running ones save and stop
        raise


def _interrupt_now(client, sweep: str) -> None:
    """SIGINT to the sweep's running trainings at once, on every worker (their tasks' poll of the stop
    Event, every POLL_SECONDS, does it too: this only saves the wait, so a failure here is not fatal)."""
    try:
        client.run(dask_member.interrupt, sweep, on_error="return")
    except Exception:  # noqa: BLE001 - e.g. a worker leaving right now; the Event still stops its member
        pass


def _finish(member: Member, future, run_dir: str) -> None:
    """Record what the task reports, or why it reported nothing (cancelled, lost with its workers)."""
    if future.cancelled():
        member.status = "not started"
        return
    try:
        answer = future.result()
    except Exception as exc:  # e.g. KilledWorker: the member's workers died more often than Dask allows
        member.exit_code, member.status = 1, "failed"
        member.message = f"{type(exc).__name__}: {exc}"
        member.run_dir = Path(run_dir) if dask_member.has_checkpoint(Path(run_dir)) else None
        if member.run_dir is not None:
            member.message += f"; continue it with sgdcli train --resume {run_dir}"
        return
    if answer["exit_code"] is None:
        member.status = "not started"
        return
    record(member, answer["exit_code"], answer["stdout"], answer["stderr"])
