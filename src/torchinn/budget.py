"""Sizes for a budget: which group to shrink, and by how much.

:func:`choose_sizes` measures how much each group hurts when shrunk alone (its *sensitivity*,
the distillation error against the full-size network on calibration batches, at 3/4, 1/2 and
1/4 of its channels), then shrinks greedily: at every step, the group whose next cut costs the
least error per unit of the metric saved. The metric is counted exactly for parameters
(from the tensor plans), modelled from one ``torch.utils.flop_counter`` run for FLOPs (every
conv/linear's FLOPs are proportional to its weight's size), and measured for latency. A final
check counts (or times) the real discrete network and tightens the target until it is met.

:func:`compress` is the whole pipeline: convert, choose sizes, tune the integration grids, and
return the plain compressed network with a report.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from .convert import ConvertConfig, convert
from .integral_model import IntegralModel
from .structured import plan_size
from .train import TuneConfig, batch_inputs, tune_grid

__all__ = ["Metric", "count_flops", "flops_by_tensor", "measure_latency", "choose_sizes", "compress", "CompressReport"]

log = logging.getLogger(__name__)

Metric = Literal["params", "flops", "latency"]
_RATIOS = (0.75, 0.5, 0.25)


def count_flops(model: nn.Module, inputs: tuple) -> int:
    """FLOPs of one forward pass, counted by ``torch.utils.flop_counter``."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops()


def measure_latency(model: nn.Module, inputs: tuple, *, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of one forward pass."""
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(*inputs)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def flops_by_tensor(model: nn.Module, inputs: tuple) -> tuple[dict[str, int], int]:
    """FLOPs of one forward pass attributed to the parameter or buffer each counted op multiplies
    by (by name), and the FLOPs of ops between activations only."""
    owners = {t.untyped_storage().data_ptr(): n
              for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    mode = _FlopsByTensor(owners)
    with mode, torch.no_grad():
        model(*inputs)
    return mode.by_tensor, mode.other


class _FlopsByTensor(TorchDispatchMode):
    """Attribute the FLOPs of each counted op to the parameter it multiplies by."""

    def __init__(self, owners: Mapping[int, str]) -> None:
        super().__init__()
        self.owners = owners
        self.by_tensor: dict[str, int] = {}
        self.other = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            flops = flop_registry[packet](*args, **kwargs, out_val=out)
            # the largest owned operand is the weight (addmm(bias, x, weight.t()) lists the bias first)
            owner, largest = None, -1
            for a in pytree.tree_leaves((args, kwargs)):
                if isinstance(a, Tensor) and a.untyped_storage().data_ptr() in self.owners and a.numel() > largest:
                    owner, largest = self.owners[a.untyped_storage().data_ptr()], a.numel()
            if owner is None:
                self.other += flops
            else:
                self.by_tensor[owner] = self.by_tensor.get(owner, 0) + flops
        return out


class _Cost:
    """A metric as a function of group sizes."""

    def __init__(self, imodel: IntegralModel, metric: Metric, inputs: tuple) -> None:
        self.imodel, self.metric, self.inputs = imodel, metric, inputs
        self.plans = imodel.plans()
        self.per_element: dict[str, float] = {}
        self.other = 0.0
        if metric in ("flops", "latency"):
            full = imodel.sizes()
            imodel.resize({n: imodel.groups[n].max_size for n in full})
            try:
                small = imodel.to_discrete().eval()
            finally:
                imodel.resize(full)
            by_tensor, other = flops_by_tensor(small, inputs)
            numel = {n: t.numel() for n, t in list(small.named_parameters()) + list(small.named_buffers())}
            self.other = float(other)
            for name, flops in by_tensor.items():
                if name in self.plans:
                    self.per_element[name] = flops / numel[name]
                else:  # a tensor outside every group: its FLOPs do not change
                    self.other += flops

    def model(self, sizes: Mapping[str, int]) -> float:
        """The metric predicted from sizes (FLOPs for the latency metric)."""
        if self.metric == "params":
            return float(self.imodel.num_parameters(sizes))
        return self.other + sum(c * math.prod(plan_size(p, sizes) for p in self.plans[name])
                                for name, c in self.per_element.items())

    def measure(self, sizes: Mapping[str, int]) -> float:
        """The metric of the real discrete network at ``sizes``."""
        if self.metric == "params":
            return float(self.imodel.num_parameters(sizes))
        saved = self.imodel.sizes()
        self.imodel.resize(dict(sizes))
        try:
            small = self.imodel.to_discrete().eval()
        finally:
            self.imodel.resize(saved)
        if self.metric == "flops":
            return float(count_flops(small, self.inputs))
        return measure_latency(small, self.inputs)


def _distill_error(imodel: IntegralModel, batches: Sequence[tuple], reference: Sequence[Any]) -> float:
    err = 0.0
    with torch.no_grad():
        for inputs, ref in zip(batches, reference):
            out = imodel(*inputs)
            for o, r in zip(pytree.tree_leaves(out), pytree.tree_leaves(ref)):
                if isinstance(o, Tensor) and o.is_floating_point():
                    err += float(((o - r) ** 2).mean() / (r**2).mean().clamp_min(1e-12))
    return err / max(1, len(batches))


def sensitivities(imodel: IntegralModel, batches: Sequence[tuple]) -> dict[str, list[tuple[float, float]]]:
    """Per group: ``[(ratio, error), ...]`` with every other group at full size."""
    full = imodel.sizes()
    with torch.no_grad():
        reference = [imodel(*b) for b in batches]
    out: dict[str, list[tuple[float, float]]] = {}
    try:
        for name, g in imodel.groups.items():
            curve = [(1.0, 0.0)]
            for r in _RATIOS:
                imodel.resize({name: max(1, round(r * g.max_size))})
                curve.append((r, _distill_error(imodel, batches, reference)))
                imodel.resize({name: full[name]})
            out[name] = curve
    finally:
        imodel.resize(full)
    return out


def _interp(curve: list[tuple[float, float]], r: float) -> float:
    pts = sorted(curve)
    if r <= pts[0][0]:  # below the smallest measured ratio: extrapolate linearly
        (r0, e0), (r1, e1) = pts[0], pts[1]
        return e0 + (e0 - e1) * (r0 - r) / (r1 - r0)
    for (r0, e0), (r1, e1) in zip(pts, pts[1:]):
        if r0 <= r <= r1:
            return e0 + (e1 - e0) * (r - r0) / (r1 - r0)
    return pts[-1][1]


def _greedy(imodel: IntegralModel, cost: _Cost, target_cost: float,
            curves: Mapping[str, list[tuple[float, float]]], min_ratio: float) -> dict[str, int]:
    groups = imodel.groups
    sizes = {n: g.max_size for n, g in groups.items()}
    lows = {n: max(1, math.ceil(min_ratio * g.max_size)) for n, g in groups.items()}
    steps = {n: max(1, g.max_size // 32) for n, g in groups.items()}
    current = cost.model(sizes)

    def move(n: str, new: int) -> tuple[float, float]:
        trial = dict(sizes, **{n: new})
        saved = current - cost.model(trial)
        m = groups[n].max_size
        hurt = _interp(curves[n], new / m) - _interp(curves[n], sizes[n] / m)
        return saved, hurt

    while current > target_cost:
        best, best_score = None, math.inf
        for n in sizes:
            new = max(lows[n], sizes[n] - steps[n])
            if new >= sizes[n]:
                continue
            saved, hurt = move(n, new)
            if saved <= 0:
                continue
            score = max(hurt, 0.0) / saved
            if score < best_score:
                best, best_score = (n, new), score
        if best is None:
            raise ValueError(f"cannot reach the target: at the smallest sizes allowed (min_ratio="
                             f"{min_ratio}) the network still has {current:.4g} > {target_cost:.4g}")
        sizes[best[0]] = best[1]
        current = cost.model(sizes)
    # grow back one channel at a time where it helps most and still fits the budget
    improved = True
    while improved:
        improved = False
        best, best_gain = None, 0.0
        for n in sizes:
            if sizes[n] >= groups[n].max_size:
                continue
            trial = dict(sizes, **{n: sizes[n] + 1})
            if cost.model(trial) > target_cost:
                continue
            m = groups[n].max_size
            gain = _interp(curves[n], sizes[n] / m) - _interp(curves[n], (sizes[n] + 1) / m)
            if gain > best_gain or best is None:
                best, best_gain = n, gain
        if best is not None:
            sizes[best] += 1
            improved = True
    return sizes


def _uniform(imodel: IntegralModel, cost: _Cost, target_cost: float, min_ratio: float) -> dict[str, int]:
    """One ratio for every group: the largest whose predicted cost fits ``target_cost``."""
    groups = imodel.groups

    def at(r: float) -> dict[str, int]:
        return {n: max(1, math.ceil(min_ratio * g.max_size), round(r * g.max_size)) for n, g in groups.items()}

    lo, hi = min_ratio, 1.0
    if cost.model(at(lo)) > target_cost:
        raise ValueError(f"cannot reach the target: at the smallest sizes allowed (min_ratio={min_ratio}) "
                         f"the network still has {cost.model(at(lo)):.4g} > {target_cost:.4g}")
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost.model(at(mid)) <= target_cost else (lo, mid)
    return at(lo)


def _batches(calibration: Iterable[Any] | None, example_inputs: tuple, n: int) -> list[tuple]:
    if calibration is None:
        return [example_inputs]
    out = []
    for batch in calibration:
        out.append(batch_inputs(batch))
        if len(out) >= n:
            break
    if not out:
        raise ValueError("the calibration loader is empty")
    return out


def choose_sizes(imodel: IntegralModel, target: float, metric: Metric = "params", *,
                 calibration: Iterable[Any] | None = None, example_inputs: tuple | None = None,
                 batches: int = 2, min_ratio: float = 0.1, method: Literal["sensitivity", "uniform"] = "sensitivity",
                 tolerance: float = 0.02) -> dict[str, int]:
    """Group sizes whose discrete network has ``target`` times the original ``metric``.

    ``target`` is the fraction kept, in (0, 1): 0.5 halves the parameters (FLOPs, latency).
    ``method="uniform"`` shrinks every group by the same ratio (for comparison).
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
        raise ValueError(f"target is the fraction of the {metric} to keep and must be in (0, 1), got {target!r}")
    if metric not in ("params", "flops", "latency"):
        raise ValueError(f"metric must be 'params', 'flops' or 'latency', got {metric!r}")
    if method not in ("sensitivity", "uniform"):
        raise ValueError(f"method must be 'sensitivity' or 'uniform', got {method!r}")
    if not isinstance(imodel, IntegralModel):
        raise TypeError(f"choose_sizes needs an IntegralModel (from torchinn.convert), got {type(imodel).__name__}")
    if metric != "params" and example_inputs is None:
        raise ValueError(f"metric={metric!r} needs example_inputs to count or time the network")
    cal = _batches(calibration, example_inputs or (), batches) if method == "sensitivity" else []
    if method == "sensitivity" and not cal[0]:
        raise ValueError("the sensitivity method needs calibration data or example_inputs")
    cost = _Cost(imodel, metric, example_inputs or ())
    full_sizes = {n: g.max_size for n, g in imodel.groups.items()}
    original = cost.measure(full_sizes)
    goal = target * original
    curves = sensitivities(imodel, cal) if method == "sensitivity" else {}
    scale = 1.0
    sizes = full_sizes
    for _ in range(6):
        predicted_goal = goal * scale * cost.model(full_sizes) / original
        sizes = (_greedy(imodel, cost, predicted_goal, curves, min_ratio) if method == "sensitivity"
                 else _uniform(imodel, cost, predicted_goal, min_ratio))
        got = cost.measure(sizes)
        if abs(got / goal - 1.0) <= tolerance or (metric == "params" and got <= goal):
            break
        scale *= goal / got
    return sizes


@dataclass
class CompressReport:
    """What :func:`compress` did."""

    metric: str
    target: float
    sizes: dict[str, tuple[int, int]]          # group -> (before, after)
    before: float                               # metric of the original network
    after: float                                # metric of the compressed network
    params_before: int
    params_after: int
    error_before_tuning: float                  # relative squared error vs the original outputs
    error_after_tuning: float
    tuning: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.after / self.before

    def __str__(self) -> str:
        lines = [f"{'group':48s} {'before':>7s} {'after':>7s}"]
        lines += [f"{n[:48]:48s} {b:7d} {a:7d}" for n, (b, a) in self.sizes.items()]
        lines.append(f"{self.metric}: {self.before:.4g} -> {self.after:.4g} ({self.ratio:.1%} of the original, "
                     f"target {self.target:.0%})")
        lines.append(f"parameters: {self.params_before:,} -> {self.params_after:,}")
        lines.append(f"relative output error: {self.error_before_tuning:.4g} before grid tuning, "
                     f"{self.error_after_tuning:.4g} after")
        return "\n".join(lines)


def compress(model: nn.Module, example_inputs: tuple | Tensor, target: float = 0.5,
             metric: Metric = "params", *, calibration: Iterable[Any] | None = None,
             tune: TuneConfig | None = None, config: ConvertConfig | None = None,
             min_ratio: float = 0.1) -> tuple[nn.Module, CompressReport]:
    """Convert ``model``, shrink its groups to ``target`` times the ``metric``, tune the grids on
    ``calibration`` (default: the example inputs), and return ``(plain_model, report)``.

    ``tune=None`` tunes for 60 s; pass ``TuneConfig(steps=...)`` to change it.
    """
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    imodel = convert(model, example_inputs, config)
    seconds["convert"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sizes = choose_sizes(imodel, target, metric, calibration=calibration, example_inputs=example_inputs,
                         min_ratio=min_ratio)
    seconds["choose_sizes"] = time.perf_counter() - t0
    cal = _batches(calibration, example_inputs, 4)
    with torch.no_grad():
        reference = [imodel(*b) for b in cal]
    full = imodel.to_discrete().eval()  # measured now: tuned (trainable) partitions cannot be resized back
    before = float(sum(p.numel() for p in full.parameters())) if metric == "params" else (
        float(count_flops(full, example_inputs)) if metric == "flops" else measure_latency(full, example_inputs))
    imodel.resize(sizes)
    err0 = _distill_error(imodel, cal, reference)
    t0 = time.perf_counter()
    loader = calibration if calibration is not None else [example_inputs]
    tuning = tune_grid(imodel, loader, config=tune or TuneConfig(seconds=60.0))
    seconds["tune"] = time.perf_counter() - t0
    imodel.eval()
    err1 = _distill_error(imodel, cal, reference)
    small = imodel.to_discrete().eval()
    after = float(sum(p.numel() for p in small.parameters())) if metric == "params" else (
        float(count_flops(small, example_inputs)) if metric == "flops" else measure_latency(small, example_inputs))
    report = CompressReport(
        metric=metric, target=target,
        sizes={n: (g.max_size, g.size) for n, g in imodel.groups.items()},
        before=before, after=after,
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in small.parameters()),
        error_before_tuning=err0, error_after_tuning=err1, tuning=tuning, seconds=seconds)
    return small, report
