"""What else the machine is doing: other processes' share of its cores (``engine/pool`` runs its splits whole
while they keep more than half a core busy; benchmarks/bench.py reports it)."""

from __future__ import annotations

import os
import time

OTHERS_BUSY = 0.5  # cores; a quiet machine's other processes use ~0.01-0.05
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Others:
    """Whether other processes keep this machine's cores busy: the machine's busy CPU time (/proc/stat,
    the host's steal included) less this process's own (``os.times``), over the last ``every`` seconds,
    above ``OTHERS_BUSY`` cores. Then ``pool.split`` runs whole: parts hand over between two threads, and
    each hand-over waits for the scheduler. Two trainings started at once took 13.6-18.8 s an epoch
    with parts, 3.7 whole, 1.0 alone (a run's times alone could not tell: whole runs were slow too
    when they came). False where /proc/stat cannot be read (then only ``split_timing`` guards)."""

    def __init__(self, sample=None, clock=time.monotonic, every: float = 0.5) -> None:
        self.sample, self.clock, self.every = sample or cpu_sample, clock, every
        self.last, self.busy, self.next = None, False, 0.0

    def __call__(self) -> bool:
        now = self.clock()
        if now < self.next:
            return self.busy
        self.next = now + self.every
        sample = self.sample()
        if sample is not None and self.last is not None:
            machine, own, wall = (a - b for a, b in zip(sample, self.last))
            self.busy = wall > 0 and (machine - own) / wall > OTHERS_BUSY
        self.last = sample
        return self.busy


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all processes, the host's steal included), from
    /proc/stat; None without it. (benchmarks/bench.py reports other processes' share with it too.)"""
    try:
        with open("/proc/stat", "rb") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS


def cpu_sample() -> tuple[float, float, float] | None:
    """(the machine's busy CPU seconds, this process's, the time), or None without /proc/stat."""
    busy = machine_busy_seconds()
    if busy is None:
        return None
    own = os.times()
    return busy, own.user + own.system, time.monotonic()
