"""How ``pool.split`` chooses between running a split in parts and whole: by the recent times of each way."""

from __future__ import annotations

RECENT, PROBE_EVERY, MAX_INTERVAL = 5, 32, 512
SLOWER = 1.5  # parts go on until they typically take this much the whole's: a guard, not a fine choice (placement noise)


class SplitTiming:
    """Recent seconds of one size's splits, in parts and whole, and which way the next one goes.

    Parts are faster while the second core is free. When it is not (two trainings at once on two
    cores, each with a two-thread pool), every hand-over between the threads waits for the
    scheduler: an epoch took 20.5 s in parts against 4.0 whole (1.0 alone; README Performance). So
    ``split`` keeps measuring: it runs in parts until the median of their last ``RECENT`` times is
    ``SLOWER`` times the least of the whole's, and the other way once every ``interval`` calls, the interval
    doubling each time that way loses (up to ``MAX_INTERVAL``) and back to ``PROBE_EVERY`` when it
    wins. Both ways give the same bits, so the choice never changes a result."""

    def __init__(self) -> None:
        self.times: dict[bool, list[float]] = {True: [], False: []}
        # What a way typically takes: the lower median of the parts' recent times, the least of the whole's
        # (a time slice another process's thread took shows in a whole run too, now and then: 8 ms for 0.5).
        self.typical: dict[bool, float] = {}
        self.warm: set[bool] = set()  # the ways run once: a first run (the probe, a new thread state) is not timed
        self.calls, self.interval, self.probing = 0, PROBE_EVERY, False

    def choose(self) -> bool:
        """Whether the next split runs in parts."""
        self.calls += 1
        for way in (True, False):
            if way not in self.typical:
                return way
        best = self.typical[True] <= SLOWER * self.typical[False]
        self.probing = self.calls % self.interval == 0
        return best != self.probing

    def add(self, parts: bool, seconds: float) -> None:
        """A split's seconds, the way it ran; a probe that wins brings the next one soon."""
        if parts not in self.warm:
            self.warm.add(parts)
            return
        times = self.times[parts]
        times.append(seconds)
        del times[:-RECENT]
        self.typical[parts] = sorted(times)[(len(times) - 1) // 2] if parts else min(times)
        if self.probing and (not parts) in self.typical:
            faster = seconds <= self.typical[not parts] * (SLOWER if parts else 1 / SLOWER)
            self.interval = PROBE_EVERY if faster else min(2 * self.interval, MAX_INTERVAL)
        self.probing = False
