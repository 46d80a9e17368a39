"""What the demo (:mod:`torchinn_demo.tour`) and the benchmarks (``benchmarks/*.py``) share: the
machine and its load, the teacher whose outputs are computed once, resampling + grid tuning at
given sizes, interleaved timing, and tables. (Fine-tuning every weight of a plain network, for
the pruning baselines, is :func:`torchinn.training.train.finetune`: the loop grid tuning runs.)

>>> print(Table(["level", "accuracy"], [["0%", "98.3%"], ["50%", "96.7%"]]).markdown())
| level | accuracy |
|-------|---------:|
| 0%    |    98.3% |
| 50%   |    96.7% |
>>> print(Table(["level", "accuracy"], [["0%", "98.3%"]]).markdown(aligned=False))
| level | accuracy |
|---|---:|
| 0% | 98.3% |
"""

from __future__ import annotations

import copy
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchinn.model.integral_model import IntegralModel
from torchinn.training.train import TuneConfig, tune_grid

__all__ = ["load_average", "load_text", "cpu_name", "machine", "n_params", "CachedTeacher", "resample_and_tune",
           "interleaved_times", "Table"]


# -- the machine -----------------------------------------------------------------------------------

def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (NaN where the system does not report them)."""
    try:
        return os.getloadavg()
    except (OSError, AttributeError):  # pragma: no cover - not on Unix
        return (math.nan, math.nan, math.nan)


def load_text(digits: int = 1, sep: str = "/", count: int = 3) -> str:
    """The first ``count`` load averages as text (``"1.0/0.9/0.5"``), or ``"n/a"``."""
    values = load_average()[:count]
    if any(math.isnan(v) for v in values):
        return "n/a"
    return sep.join(f"{v:.{digits}f}" for v in values)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` says."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def machine() -> dict[str, Any]:
    """CPU, cores, torch threads and versions, and the OpenMP wait policy."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)")}


def machine_line() -> str:
    """The machine in one line (torch, CPU, cores, load average), for a benchmark's header."""
    return (f"torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} cores, "
            f"load average {load_average()[0]:.2f}")


def fractions(text: str) -> tuple[float, ...]:
    """An ``argparse`` type: comma-separated fractions, each in (0, 1) (``--levels 0.25,0.5``)."""
    import argparse

    try:
        values = tuple(float(v) for v in text.split(",") if v)
    except ValueError:
        values = ()
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers in (0, 1), got {text!r}")
    return values


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# -- compression ---------------------------------------------------------------------------------

class CachedTeacher(nn.Module):
    """The original network, its outputs on each (fixed) calibration batch computed once: the
    calibration batches are the same tensors at every pass, so every method that distils against
    it saves the teacher's forward pass the same way."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.memo: dict[int, tuple[Tensor, Tensor]] = {}

    def forward(self, x: Tensor) -> Tensor:
        hit = self.memo.get(id(x))
        if hit is None or hit[0] is not x:
            with torch.no_grad():
                hit = (x, self.net(x))
            self.memo[id(x)] = hit
        return hit[1]


def resample_and_tune(imodel: IntegralModel, sizes: Mapping[str, int], batches: Sequence, teacher: nn.Module,
                      config: TuneConfig, loss_fn: Callable | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """(discrete network resampled at ``sizes``, discrete network after grid tuning with ``config``,
    the tuning report); ``imodel`` is left as it was (a copy is resized and tuned)."""
    m = copy.deepcopy(imodel)
    m.resize(dict(sizes))
    untuned = m.to_discrete(graph=True).eval()
    report = tune_grid(m, batches, teacher=teacher, loss_fn=loss_fn, tune=config)
    return untuned, m.to_discrete(graph=True).eval(), report


# -- speed and tables ------------------------------------------------------------------------------

def interleaved_times(models: Mapping[str, Callable[[Tensor], Any]], x: Tensor, rounds: int,
                      warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of each forward pass of every model on ``x`` under ``torch.no_grad``, the models
    interleaved round by round (the order rotates, so a change in the machine's load hits them all),
    after ``warmup`` untimed passes each. Returns (times per model, warm-up seconds per model)."""
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    warm: dict[str, float] = {}
    with torch.no_grad():
        for n in names:
            t0 = time.perf_counter()
            for _ in range(warmup):
                models[n](x)
            warm[n] = time.perf_counter() - t0
        for r in range(rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                models[n](x)
                times[n].append(time.perf_counter() - t0)
    return times, warm


@dataclass
class Table:
    """A table as strings; :meth:`markdown` writes it (the first column left-aligned, the others
    right-aligned), padded to align in a terminal or not."""

    columns: list[str]
    rows: list[list[str]]

    def markdown(self, aligned: bool = True) -> str:
        if not aligned:
            rule = "|---|" + "---:|" * (len(self.columns) - 1)
            return "\n".join(["| " + " | ".join(self.columns) + " |", rule]
                             + ["| " + " | ".join(r) + " |" for r in self.rows])
        width = [max([len(c)] + [len(r[i]) for r in self.rows]) for i, c in enumerate(self.columns)]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                     for i, (c, w) in enumerate(zip(cells, width))) + " |"

        rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(width)) + "|"
        return "\n".join([line(self.columns), rule] + [line(r) for r in self.rows])
