"""Sizes for a budget: which group to shrink, and by how much.

:func:`choose_sizes` measures how much each group hurts when shrunk alone (its *sensitivity*,
the distillation error against the full-size network on calibration batches, at 3/4, 1/2 and
1/4 of its channels), then shrinks greedily: at every step, the group whose next cut costs the
least error per unit of the metric saved. The metric is counted exactly for parameters
(from the tensor plans), modelled from one ``torch.utils.flop_counter`` run for FLOPs (every
conv/linear's FLOPs are proportional to its weight's size), and measured for latency. A final
check counts (or times) the real discrete network and tightens the target until it is met.

:func:`torchinn.compression.pipeline.compress` is the whole pipeline that uses them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal


from ..training.distill import LOSS_CHOICES, Distillation, resolve_loss
from ..model.inputs import check_batches
from .cost import Cost
from .importance import Importance, channel_importance, fisher_curves, measure_importance
from ..model.integral_model import IntegralModel
from ..sizing.metrics import Metric
from ..options import check_choice, check_number
from ..sizing.rounding import Multiple, ceil_size, floor_size, resolve_multiple, round_size
from .starts import STARTS, best_start, distill_error, full_outputs, kept_partitions, start_partition
from ..model.inputs import as_inputs, batch_inputs, padding_mask

__all__ = ["UnreachableTarget", "check_resizable", "choose_sizes", "compare_sizes"]

log = logging.getLogger(__name__)

class UnreachableTarget(ValueError):
    """No sizes allowed (``min_ratio``) bring the network down to the target."""


def check_resizable(imodel: IntegralModel) -> None:
    """:class:`UnreachableTarget` when ``imodel`` has no group of channels to resize: no size,
    however small, changes its cost (every channel count is fixed by the inputs and outputs, or
    kept at full size around operations torchinn cannot follow)."""
    if not imodel.groups:
        raise UnreachableTarget(
            "cannot reach the target: the converted network has no group of channels that can be resized, "
            "so no size changes it (every channel count is fixed by an input or an output, or kept at full "
            "size: by ConvertConfig(unsupported='keep') around operations torchinn cannot follow, such as an "
            "LSTM, or by ConvertConfig(keep_discrete=...)); the conversion's log names what it kept")


def check_budget(target: object, metric: object, min_ratio: object) -> None:
    """The budget options of :func:`choose_sizes` and :func:`torchinn.compress`."""
    check_choice(metric, ("params", "flops", "latency"), "metric")
    check_number(target, f"target (the fraction of the {metric} to keep)", 0, 1, low_open=True, high_open=True)
    check_number(min_ratio, "min_ratio (the smallest share of a group's channels)", 0, 1, low_open=True)


SizeMethod = Literal["best", "sensitivity", "fisher", "uniform"]
_RATIOS = (0.75, 0.5, 0.25)


def sensitivities(imodel: IntegralModel, batches: Sequence[tuple], loss: str | Distillation = "auto"
                  ) -> dict[str, list[tuple[float, float]]]:
    """Per group: ``[(ratio, error), ...]`` with every other group at full size; the error of a
    ratio is the lower of the INN resampled and of L1 selection (the starts compress tries
    first), measured with ``loss`` (``"auto"``: KL for class logits at a temperature set from the
    network's confidence, else squared error: :func:`torchinn.training.distill.resolve_loss`)."""
    _check_loss(loss)
    reference = full_outputs(imodel, batches)
    loss = resolve_loss(loss, reference, masks=[padding_mask(b) for b in batches])
    scores = channel_importance(imodel)
    out: dict[str, list[tuple[float, float]]] = {}
    with kept_partitions(imodel):
        for n, p in imodel.full_partitions().items():
            imodel.set_partition(n, p)
        for name, g in imodel.groups.items():
            curve = [(1.0, 0.0)]
            uniform = g.partition
            for r in _RATIOS:
                size = g.partition.quadrature.nearest_size(max(1, round(r * g.max_size)), high=g.max_size)
                errors = []
                for kind in ("uniform", "l1"):
                    imodel.set_partition(name, start_partition(uniform, size, kind, scores[name]))
                    errors.append(distill_error(imodel, batches, reference, loss))
                curve.append((r, min(errors)))
            imodel.set_partition(name, uniform)
            out[name] = curve
    return out


def _check_loss(loss: object) -> None:
    if not isinstance(loss, Distillation):
        check_choice(loss, LOSS_CHOICES, "loss")


def _interp(curve: list[tuple[float, float]], r: float) -> float:
    pts = sorted(curve)
    if r <= pts[0][0]:  # below the smallest measured ratio: extrapolate linearly
        (r0, e0), (r1, e1) = pts[0], pts[1]
        return e0 + (e0 - e1) * (r0 - r) / (r1 - r0)
    for (r0, e0), (r1, e1) in zip(pts, pts[1:]):
        if r0 <= r <= r1:
            return e0 + (e1 - e0) * (r - r0) / (r1 - r0)
    return pts[-1][1]


class _Grid:
    """The sizes each group may take: multiples of its ``multiple`` (or its full size) that its
    quadrature allows, no smaller than ``min_ratio`` of its channels (:mod:`torchinn.sizing.rounding`)."""

    def __init__(self, imodel: IntegralModel, multiples: Mapping[str, int], min_ratio: float) -> None:
        self.multiples = dict(multiples)
        self.groups = {n: (g.max_size, self.multiples[n], g.partition.quadrature.allows)
                       for n, g in imodel.groups.items()}
        self.lows = {n: ceil_size(max(1, math.ceil(min_ratio * g.max_size)), *self.groups[n])
                     for n, g in imodel.groups.items()}

    def down(self, name: str, size: int) -> int:
        """The largest allowed size <= ``size``, at least the group's lowest."""
        return max(self.lows[name], floor_size(size, *self.groups[name]) or 0)

    def up(self, name: str, size: int) -> int:
        """The smallest allowed size >= ``size``, at least the group's lowest."""
        return max(self.lows[name], ceil_size(size, *self.groups[name]))

    def nearest(self, name: str, size: int) -> int:
        return max(self.lows[name], round_size(size, *self.groups[name]))

    @property
    def note(self) -> str:
        rounded = {n: m for n, m in self.multiples.items() if m > 1}
        if not rounded:
            return ""
        one = set(rounded.values())
        if len(one) == 1 and len(rounded) == len(self.multiples):
            return f", multiple={one.pop()}"
        return f", multiple={rounded}"


def _greedy(imodel: IntegralModel, cost: Cost, target_cost: float,
            curves: Mapping[str, list[tuple[float, float]]], min_ratio: float, grid: _Grid) -> dict[str, int]:
    groups = imodel.groups
    sizes = {n: g.max_size for n, g in groups.items()}
    steps = {n: max(1, g.max_size // 32) for n, g in groups.items()}
    current = cost.model(sizes)

    def move(n: str, new: int) -> tuple[float, float]:
        saved = cost.saved(sizes, n, new)
        m = groups[n].max_size
        hurt = _interp(curves[n], new / m) - _interp(curves[n], sizes[n] / m)
        return saved, hurt

    while current > target_cost:
        best, best_score = None, math.inf
        for n in sizes:
            new = grid.down(n, sizes[n] - steps[n])
            if new >= sizes[n]:
                continue
            saved, hurt = move(n, new)
            if saved <= 0:
                continue
            score = max(hurt, 0.0) / saved
            if score < best_score:
                best, best_score = (n, new), score
        if best is None:
            raise UnreachableTarget(f"cannot reach the target: at the smallest sizes allowed (min_ratio="
                                    f"{min_ratio}{grid.note}) the network still has {cost.amount(current)} > "
                                    f"{cost.amount(target_cost)}{cost.note}{cost.fixed_note()}")
        sizes[best[0]] = best[1]
        current = cost.model(sizes)
    # grow back one allowed size at a time where it helps most and still fits the budget
    improved = True
    while improved:
        improved = False
        best, best_gain = None, 0.0
        current = cost.model(sizes)
        for n in sizes:
            if sizes[n] >= groups[n].max_size:
                continue
            trial = dict(sizes, **{n: grid.up(n, sizes[n] + 1)})
            if current - cost.saved(sizes, n, trial[n]) > target_cost:
                continue
            m = groups[n].max_size
            gain = _interp(curves[n], sizes[n] / m) - _interp(curves[n], trial[n] / m)
            if gain > best_gain or best is None:
                best, best_gain = n, gain
        if best is not None:
            sizes[best] = grid.up(best, sizes[best] + 1)
            improved = True
    return sizes


def _uniform(imodel: IntegralModel, cost: Cost, target_cost: float, min_ratio: float, grid: _Grid
             ) -> dict[str, int]:
    """One ratio for every group: the largest whose predicted cost fits ``target_cost`` (each
    size the allowed one nearest to the ratio)."""
    groups = imodel.groups

    def at(r: float) -> dict[str, int]:
        return {n: grid.nearest(n, round(r * g.max_size)) for n, g in groups.items()}

    lo, hi = min_ratio, 1.0
    if cost.model(at(lo)) > target_cost:
        raise UnreachableTarget(f"cannot reach the target: at the smallest sizes allowed (min_ratio={min_ratio}"
                                f"{grid.note}) the network still has {cost.amount(cost.model(at(lo)))} > "
                                f"{cost.amount(target_cost)}{cost.note}{cost.fixed_note()}")
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost.model(at(mid)) <= target_cost else (lo, mid)
    sizes = at(lo)
    # rounding leaves part of the budget unused: top up the group furthest below the common
    # ratio, one allowed size at a time, while the budget allows (the ratios stay as equal as can be)
    full = {n: g.max_size for n, g in groups.items()}
    while True:  # a move re-counts only the tensors of the group it changes (Cost.saved)
        now = cost.model(sizes)
        fits = [n for n in sizes if sizes[n] < full[n]
                and now - cost.saved(sizes, n, grid.up(n, sizes[n] + 1)) <= target_cost]
        if not fits:
            return sizes
        n = min(fits, key=lambda k: (grid.up(k, sizes[k] + 1) / full[k], k))
        sizes[n] = grid.up(n, sizes[n] + 1)


def _batches(calibration: Iterable[Any] | None, example_inputs: tuple, n: int,
             imodel: IntegralModel | None = None) -> list[tuple]:
    """The inputs of the first ``n`` batches, checked against ``imodel``'s (:mod:`torchinn.model.inputs`)."""
    out = [example_inputs] if calibration is None else []
    for batch in calibration if calibration is not None else ():
        out.append(batch_inputs(batch))
        if len(out) >= n:
            break
    if not out:
        raise ValueError("the calibration loader is empty")
    if imodel is not None and (calibration is not None or example_inputs):
        check_batches(imodel, out, "calibration batch" if calibration is not None else "example_inputs as batch")
    return out


def choose_sizes(imodel: IntegralModel, target: float, metric: Metric = "params", *,
                 calibration: Iterable[Any] | None = None, example_inputs: tuple | Mapping[str, Any] | None = None,
                 max_batches: int = 2, min_ratio: float = 0.1, method: SizeMethod = "best",
                 tolerance: float = 0.02, loss: str | Distillation = "auto", multiple: Multiple = 1,
                 importance: Importance | None = None,
                 curves: Mapping[str, Sequence[tuple[float, float]]] | None = None) -> dict[str, int]:
    """Group sizes whose discrete network has ``target`` times the original ``metric``.

    ``target`` is the fraction kept, in (0, 1): 0.5 halves the parameters (FLOPs, latency).
    ``method="sensitivity"`` shrinks the groups that hurt least per unit of the metric saved;
    ``"fisher"`` does the same with the error of each group estimated from one forward and
    backward pass per batch instead of measured (:mod:`torchinn.compression.importance`; ``importance``
    passes scores already measured on these batches with this loss), which costs one pass per
    batch instead of six per group;
    ``"uniform"`` shrinks every group by the same ratio (what selection baselines usually do);
    ``"best"`` (default) computes all three and keeps the one with the lower calibration error, each
    at its best starting partition (:func:`torchinn.compression.starts.best_start`); the comparison is
    logged, and :func:`compare_sizes` returns it.

    ``curves`` (group -> ``[(ratio, error), ...]``, with ``(1.0, 0.0)``) gives ``"sensitivity"``
    the error of each group shrunk alone, measured already (as an elastic network carries them:
    :class:`torchinn.elastic.ElasticNetwork`), so that no network runs and no data is needed.

    ``multiple`` (one int such as 8 or 16, or group name -> int; default 1: any size) restricts
    every group to multiples of it or its full size (:mod:`torchinn.sizing.rounding`): both methods
    search over those sizes only, so the target is met by the rounded sizes themselves, and a
    latency target is timed on them.
    """
    check_budget(target, metric, min_ratio)
    check_choice(method, ("sensitivity", "fisher", "uniform", "best"), "method")
    _check_loss(loss)
    check_number(tolerance, "tolerance", 0)
    check_number(max_batches, "max_batches", 1, integer=True)
    if not isinstance(imodel, IntegralModel):
        raise TypeError(f"choose_sizes needs an IntegralModel (from torchinn.convert), got {type(imodel).__name__}")
    check_resizable(imodel)
    if example_inputs is not None:
        example_inputs = as_inputs(example_inputs)
    if metric != "params" and example_inputs is None:
        raise ValueError(f"metric={metric!r} needs example_inputs to count or time the network")
    groups = imodel.groups
    multiples = resolve_multiple(multiple, list(groups), lambda name: groups[name].name)
    if curves is not None:
        if method != "sensitivity":
            raise ValueError(f"curves are the measured sensitivities: they need method='sensitivity', got {method!r}")
        missing = sorted(set(imodel.groups) - set(curves))
        if missing:
            raise ValueError(f"curves has no entry for group(s) {missing[:5]}")
    if method == "best":
        if calibration is not None and iter(calibration) is calibration:  # one shot: read it once
            calibration = _batches(calibration, example_inputs or (), max(max_batches, 4), imodel)
        cal = _batches(calibration, example_inputs or (), max(max_batches, 4), imodel)
        reference = full_outputs(imodel, cal) if cal[0] else None  # no data: the sensitivity method says so
        if reference is not None:
            # once, so that both methods and the comparison agree
            loss = resolve_loss(loss, reference, masks=[padding_mask(b) for b in cal])
        options, errors = {}, []
        for m in ("sensitivity", "fisher", "uniform"):
            try:
                options[m] = choose_sizes(imodel, target, metric, calibration=calibration, example_inputs=example_inputs,
                                          max_batches=max_batches, min_ratio=min_ratio, method=m, tolerance=tolerance, loss=loss,
                                          multiple=multiples, importance=importance)
            except UnreachableTarget as err:  # e.g. one ratio for all cannot reach a latency target
                errors.append(err)
        if not options:
            raise errors[0]
        if len(options) == 1:
            return next(iter(options.values()))
        winner, table = compare_sizes(imodel, options, cal, loss=loss, reference=reference)
        log.info("choose_sizes: %s sizes win (%s)", winner,
                 ", ".join(f"{m}: {e:.4g}" for m, e in table.items()))
        return options[winner]
    measured = method in ("sensitivity", "fisher") and curves is None
    cal = _batches(calibration, example_inputs or (), max_batches, imodel) if measured else []
    if measured and not cal[0]:
        raise ValueError(f"the {method} method needs calibration data or example_inputs")
    cost = Cost(imodel, metric, example_inputs or ())
    full_sizes = {n: g.max_size for n, g in imodel.groups.items()}
    original = cost.measure(full_sizes)
    goal = target * original
    if method == "sensitivity":
        curves = {n: list(c) for n, c in curves.items()} if curves is not None else sensitivities(imodel, cal, loss)
    elif method == "fisher":
        if importance is None or not importance.fisher:
            reference = full_outputs(imodel, cal)
            loss = resolve_loss(loss, reference, masks=[padding_mask(b) for b in cal])
            importance = measure_importance(imodel, cal, loss, reference)
        curves = fisher_curves(imodel, importance.fisher)
    else:
        curves = {}
    grid = _Grid(imodel, multiples, min_ratio)
    scale = 1.0
    sizes = full_sizes
    tried = []
    for _ in range(6):
        predicted_goal = goal * scale * cost.model(full_sizes) / original
        sizes = (_greedy(imodel, cost, predicted_goal, curves, min_ratio, grid) if method in ("sensitivity", "fisher")
                 else _uniform(imodel, cost, predicted_goal, min_ratio, grid))
        got = cost.measure(sizes)
        if abs(got / goal - 1.0) <= tolerance or (metric == "params" and got <= goal):
            return sizes
        tried.append((got, sizes))
        scale *= goal / got
    # not within the tolerance (coarse sizes, such as multiples of 16 on small groups, may skip
    # over it): the largest of the tries that meets the target, else the last
    met = [(got, s) for got, s in tried if got <= goal * (1.0 + tolerance)]
    return max(met, key=lambda t: t[0])[1] if met else sizes


def compare_sizes(imodel: IntegralModel, options: Mapping[str, Mapping[str, int]], calibration: Sequence[tuple],
                  starts: Sequence[str] = STARTS, loss: str | Distillation = "auto",
                  reference: Sequence[Any] | None = None) -> tuple[str, dict[str, float]]:
    """The calibration error of each set of sizes at its best starting partition (all groups
    alike; ``loss="auto"``: KL divergence for class logits, else relative squared error, see
    :func:`torchinn.training.distill.resolve_loss`), and the name of the lowest. ``imodel`` is left as it was."""
    _check_loss(loss)
    reference = full_outputs(imodel, calibration) if reference is None else reference
    loss = resolve_loss(loss, reference, masks=[padding_mask(b) for b in calibration])
    table = {}
    for name, sizes in options.items():
        with kept_partitions(imodel):
            imodel.resize(dict(sizes))
            table[name] = best_start(imodel, calibration, kinds=starts, per_group=False, reference=reference,
                                     loss=loss).error
    return min(table, key=lambda m: table[m]), table
