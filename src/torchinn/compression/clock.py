"""The clock :func:`torchinn.compress`'s time bound is counted on.

With a time budget from the user (``TuneConfig(seconds=...)``) the bound is wall time: the user
has that many seconds. Without one (``tune=False``, or ``TuneConfig(seconds=None)``) the bound is
the library's own, and counting it in wall time made the work done inside it follow the load of
the machine: on two cores shared with two other jobs, the same ``tune=False`` call on a BERT
token classifier left 23 of its layers unrefit and gave 0.8% entity F1 instead of 84.5%
(benchmarks/RESULTS.md). Inside :func:`run_time` the clock runs at the pace the process got the
CPU: between two readings, wall time times the smallest share of its runnable time that any busy
thread of the process spent running (Linux's per-thread ``schedstat``: CPU time and time waiting
on a run queue). So a busy machine takes longer and does the same work; where the files cannot be
read, the clock is wall time. Time spent sleeping or waiting for a GPU counts as run time.

The smallest share, not the calling thread's: with several intra-op threads, the calling thread
spins at the end of a parallel region while a worker waits for a CPU, so its own share can look
full while the region goes at the worker's pace. What no share shows: on a machine with more
runnable threads than cores, threads spin at every barrier waiting for a thread that is not
running, and that spinning counts as running. Rampart at 50% with 2 threads at a tenth of the
CPU did less than on an idle machine either way (0.3-20.7% F1 against 85.6%); with one thread it
made the idle machine's choices. :func:`torchinn.compress` warns in that case.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar

import torch

__all__ = ["now", "run_time", "waited", "waits_warning"]

#: the kernel's per-thread scheduler statistics: ``{TASKS}/<tid>/schedstat``
TASKS = "/proc/self/task"
#: readings closer than this (seconds) are not taken: the clock runs on at the last pace between them
SAMPLE_SECONDS = 0.05
#: a thread counts in a window when it was running or ready to run for this share of it
BUSY_SHARE = 0.1
#: :func:`waits_warning` speaks when a call waited for a CPU more than this share of its seconds
WAITED_WARNING = 0.25


def _schedstat(path: str) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds waiting on a run queue) of a ``schedstat`` file, or None."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.read().split()
        return int(fields[0]) * 1e-9, int(fields[1]) * 1e-9
    except (OSError, IndexError, ValueError):
        return None


def _threads() -> dict[str, tuple[float, float]] | None:
    """Per thread of the process: (CPU, waiting) seconds; None where the kernel does not say."""
    try:
        tids = os.listdir(TASKS)
    except OSError:
        return None
    out = {}
    for tid in tids:
        stat = _schedstat(f"{TASKS}/{tid}/schedstat")
        if stat is not None:
            out[tid] = stat
    return out or None


class _RunClock:
    """Wall time, each window between readings scaled by the busy threads' smallest running share."""

    def __init__(self, leave_out: bool) -> None:
        self.leave_out = leave_out
        self.stats = _threads()
        self.start = self.wall = time.perf_counter()
        self.run = 0.0    # run seconds up to self.wall
        self.pace = 1.0   # the last window's share, for readings between samples

    def _advance(self) -> float:
        t = time.perf_counter()
        dt = t - self.wall
        if self.stats is None or dt < SAMPLE_SECONDS:
            return self.run + max(0.0, dt) * self.pace  # no schedstat: pace stays 1, wall time
        stats = _threads() or {}
        shares = []
        for tid, (cpu, wait) in stats.items():
            if tid in self.stats:
                ran, waited = cpu - self.stats[tid][0], wait - self.stats[tid][1]
                if ran + waited >= BUSY_SHARE * dt and ran + waited > 0:
                    shares.append(max(0.0, ran) / (ran + waited))
        self.pace = min(shares) if shares else 1.0  # none busy: sleeping, or waiting for a device
        self.run += dt * self.pace
        self.stats, self.wall = stats, t
        return self.run

    def now(self) -> float:
        return self.start + self._advance() if self.leave_out else time.perf_counter()

    def waited(self) -> float:
        return max(0.0, time.perf_counter() - self.start - self._advance())


_CLOCK: ContextVar[_RunClock | None] = ContextVar("torchinn_run_clock", default=None)


def now() -> float:
    """``time.perf_counter()``, less the time waited for a CPU inside :func:`run_time` (when it
    leaves it out)."""
    clock = _CLOCK.get()
    return time.perf_counter() if clock is None else clock.now()


def waited() -> float:
    """Seconds waited for a CPU since :func:`run_time` began (0 outside it, or where the kernel
    does not say), left out of :func:`now` or not."""
    clock = _CLOCK.get()
    return 0.0 if clock is None else clock.waited()


@contextlib.contextmanager
def run_time(leave_out: bool = True) -> Iterator[None]:
    """Within this block :func:`waited` counts the time waited for a CPU, and (when ``leave_out``)
    :func:`now` leaves it out."""
    token = _CLOCK.set(_RunClock(leave_out))
    try:
        yield
    finally:
        _CLOCK.reset(token)


def waits_warning(waited: float, spent: float, budget: float | None) -> str | None:
    """What to tell the user of a call that took ``spent`` seconds and waited ``waited`` of them for a
    CPU, with a time budget of ``budget`` seconds (None: the library's own bound, on this clock),
    or None when the waits were at most :data:`WAITED_WARNING` of the call or changed nothing."""
    if waited <= WAITED_WARNING * spent:
        return None
    if budget is not None:
        return (f"waited {waited:.1f} s of its {spent:.1f} s for a CPU (other jobs on this machine): a time budget is "
                f"wall time, so less was chosen and tuned than an idle machine would in {budget:g} s; give it more "
                "seconds, or tune=False, whose own bound counts only the time the call ran")
    if torch.get_num_threads() > 1:
        return (f"waited {waited:.1f} s of its {spent:.1f} s for a CPU with {torch.get_num_threads()} intra-op threads: "
                "its own bound leaves the waits out, but on a busy machine threads spin at the end of every parallel "
                "region and that counts as running, so less was chosen than an idle machine would; beside other "
                "jobs, torch.set_num_threads(1) makes the idle machine's choices (benchmarks/RESULTS.md)")
    return None
