"""The clock :func:`torchinn.compress`'s time bound is counted on.

With a time budget from the user (``TuneConfig(seconds=...)``) the bound is wall time: the user
has that many seconds. Without one (``tune=False``, or ``TuneConfig(seconds=None)``) the bound is
the library's own, and counting it in wall time made the work done inside it follow the load of
the machine: on two cores shared with two other jobs, the same ``tune=False`` call on a BERT
token classifier left 23 of its layers unrefit and gave 0.8% entity F1 instead of 84.5%
(benchmarks/RESULTS.md). Inside :func:`run_time` the clock leaves out the time the calling
thread was ready to run but waited for a CPU (Linux's per-thread ``run_delay``, the second field
of ``/proc/thread-self/schedstat``), so a busy machine takes longer and does the same work; where
that file cannot be read, the clock is wall time. Time spent sleeping or waiting for a GPU counts.

Only the calling thread is read: with several intra-op threads, a worker that waits for a CPU
while the calling thread spins at a barrier is not seen, so the clock can still run a little
fast on a loaded machine (never slow).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

__all__ = ["now", "run_time", "waited"]

#: the kernel's scheduler statistics of a thread (``{tid}``: its native id)
SCHEDSTAT = "/proc/self/task/{tid}/schedstat"
#: (seconds the calling thread has waited for a CPU since :func:`run_time` began, or None where
#: unknown; whether :func:`now` leaves them out)
_WAITED: ContextVar[tuple[Callable[[], float] | None, bool]] = ContextVar("torchinn_waited", default=(None, False))


def now() -> float:
    """``time.perf_counter()``, less the time waited for a CPU inside :func:`run_time` (when it
    leaves it out)."""
    t = time.perf_counter()
    reader, leave_out = _WAITED.get()
    return t - reader() if reader is not None and leave_out else t


def waited() -> float:
    """Seconds the calling thread has waited for a CPU since :func:`run_time` began (0 outside it,
    or where the kernel does not say), left out of :func:`now` or not."""
    reader, _ = _WAITED.get()
    return 0.0 if reader is None else reader()


def _run_delay(path: str) -> float | None:
    """The run_delay of ``path`` (a ``schedstat`` file) in seconds, or None when unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.read().split()
        return int(fields[1]) * 1e-9
    except (OSError, IndexError, ValueError):
        return None


def _reader(path: str) -> Callable[[], float] | None:
    start = _run_delay(path)
    if start is None:
        return None

    def read() -> float:
        value = _run_delay(path)
        return 0.0 if value is None else max(0.0, value - start)
    return read


@contextlib.contextmanager
def run_time(leave_out: bool = True) -> Iterator[None]:
    """Within this block :func:`waited` counts the time the calling thread waited for a CPU, and
    (when ``leave_out``) :func:`now` leaves it out."""
    token = _WAITED.set((_reader(SCHEDSTAT.format(tid=threading.get_native_id())), leave_out))
    try:
        yield
    finally:
        _WAITED.reset(token)
