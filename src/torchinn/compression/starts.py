"""Starting partitions for post-training compression, and the choice among them.

At given sizes, an integral network can start from several partitions of each group:

* ``"uniform"``: the quadrature's standard nodes (the INN resampled, as in the paper);
* ``"l1"``: points on the channels with the largest L1 norm, weighted like plain channel
  selection (``TrainablePartition(mix=0)``): this *is* L1-norm pruning (Li et al. 2016), so the
  family of integral networks contains the selection baseline;
* ``"l1-quadrature"``: the same points, weighted by the quadrature of those points (the
  integral over a non-uniform partition);
* ``"activation"``: points on the channels that feed the next layers most on the calibration
  data (:func:`activation_importance`: activation RMS times the reading weights' L1 norm, the
  channel-level form of Wanda), selection-weighted;
* ``"fisher"``: points on the channels whose removal would raise the distillation loss most
  (:func:`torchinn.compression.importance.measure_importance`: the second-order Taylor / Fisher estimate
  from one backward pass per calibration batch), selection-weighted.

:func:`best_start` measures each on calibration batches (the distillation error against the
full-size network) and keeps the best, first for all groups at once, then group by group
(:func:`refine_start`, which can also come later).

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> imodel = inn.convert(net, (torch.randn(2, 8),))
>>> _ = imodel.resize(0.5)
>>> choice = best_start(imodel, [(torch.randn(16, 8),)])
>>> sorted(choice.errors) == sorted(STARTS)
True
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import clock as timer
from ..training.distill import Distillation
from .importance import Importance, activation_importance, channel_importance, measure_importance
from ..model.inputs import padding_mask, run
from ..model.integral_model import IntegralModel
from ..options import check_choice, check_number
from ..maths.partition import Partition, UniformPartition
from ..maths.trainable import TrainablePartition
from ..maths.quadrature import GaussLegendre

__all__ = ["STARTS", "StartChoice", "activation_importance", "best_start", "check_starts", "distill_error", "full_outputs",
           "held_out_start", "kept_partitions", "refine_start", "start_partition"]

log = logging.getLogger(__name__)
aten = torch.ops.aten

STARTS = ("uniform", "l1", "l1-quadrature", "activation", "fisher")
#: the ``loss`` of :func:`distill_error` (``"auto"`` is resolved by the callers that take it)
DISTANCES = ("mse", "kl")


def check_starts(kinds: object) -> None:
    """``kinds`` is a non-empty sequence of names from :data:`STARTS`."""
    if isinstance(kinds, str) or not isinstance(kinds, Sequence) or not kinds:
        raise ValueError(f"starts must be a non-empty sequence of names from {STARTS}, got {kinds!r}")
    for k in kinds:
        check_choice(k, STARTS, "every entry of starts")


def distill_error(imodel: Any, batches: Sequence[tuple], reference: Sequence[Any],
                  loss: str | Distillation = "mse") -> float:
    """Mean over batches of the distance of the outputs to ``reference``: ``"mse"``, the relative
    squared error of every floating output; ``"kl"``, the KL divergence of class probabilities
    at temperature 1; a :class:`~torchinn.training.distill.Distillation`, its :meth:`~torchinn.training.distill.Distillation.error`
    (what :func:`torchinn.compress` passes: the loss it resolved once for all its choices)."""
    loss = _distance(loss)
    err = 0.0
    with torch.no_grad():
        for inputs, ref in zip(batches, reference):
            err += loss.error(run(imodel, inputs), ref, padding_mask(inputs))
    return err / max(1, len(batches))


def _distance(loss: str | Distillation) -> Distillation:
    return loss if isinstance(loss, Distillation) else Distillation(check_choice(loss, DISTANCES, "loss"))


@contextmanager
def kept_partitions(imodel: IntegralModel) -> Iterator[None]:
    """Give ``imodel`` back its partition objects, at their sizes, on the way out."""
    saved = imodel.partition_map()
    sizes = {n: p.size for n, p in saved.items() if p.resizable}
    try:
        yield
    finally:
        for n, p in saved.items():
            if n in sizes and p.size != sizes[n]:
                p.resize(sizes[n])
            imodel.set_partition(n, p)


def full_outputs(imodel: IntegralModel, batches: Sequence[tuple]) -> list[Any]:
    """The full-size network's outputs on ``batches`` (``imodel`` is left as it was)."""
    with kept_partitions(imodel):
        for n, p in imodel.full_partitions().items():
            imodel.set_partition(n, p)
        with torch.no_grad():
            return [run(imodel, b) for b in batches]


def start_partition(p: Partition, size: int, kind: str, scores: Tensor | None) -> Partition:
    """A partition of ``size`` points for a group whose current partition is ``p``."""
    if kind == "uniform" or scores is None or size >= p.max_size or isinstance(p.quadrature, GaussLegendre):
        return UniformPartition(p.max_size, p.quadrature, size)
    keep = torch.sort(torch.topk(scores, size).indices).values
    nodes = p.control_points(dtype=torch.float64)
    quadrature = p.quadrature
    try:
        quadrature.check_size(size)
    except ValueError:  # e.g. Simpson's odd sizes: selection weights do not use the rule
        if kind == "l1-quadrature":
            return UniformPartition(p.max_size, p.quadrature, size)
        quadrature = "trapezoid"
    return TrainablePartition(nodes[keep], quadrature, p.max_size, mix=0.0 if kind != "l1-quadrature" else 1.0,
                              train_mix=True)


@dataclass
class StartChoice:
    """What :func:`best_start` measured and chose."""

    kinds: dict[str, str]                       # group -> chosen start
    error: float                                # calibration error of the chosen starts
    errors: dict[str, float]                    # every start for all groups at once
    changed_groups: int = 0                     # groups whose start differs from the best overall
    seconds: float = 0.0
    partitions: dict[str, Partition] = field(default_factory=dict, repr=False)
    options: dict[str, dict[str, Partition]] = field(default_factory=dict, repr=False)  # start -> group -> partition


def best_start(imodel: IntegralModel, batches: Sequence[tuple], *, kinds: Sequence[str] = STARTS,
               per_group: bool = True, reference: Sequence[Any] | None = None,
               max_seconds: float | None = None, loss: str | Distillation = "mse",
               importance: Importance | None = None) -> StartChoice:
    """Give every group of ``imodel`` (at its current sizes) the starting partition with the
    lowest calibration error (``loss``: see :func:`distill_error`); ``imodel`` keeps the chosen
    partitions. ``per_group`` then tries the other starts one group at a time. ``max_seconds``
    bounds it all: starts are measured in the order of ``kinds`` while the next one fits (the first
    always is), and the trials group by group stop when it is spent. ``importance`` (from :func:`torchinn.compression.importance.measure_importance` on
    these batches) saves measuring the activation and Fisher scores again."""
    t0 = timer.now()
    loss = _distance(loss)
    if max_seconds is not None:
        check_number(max_seconds, "max_seconds", 0)
    check_starts(kinds)
    sizes = imodel.sizes()
    current = imodel.partition_map()
    if reference is None:
        reference = full_outputs(imodel, batches)
    l1 = channel_importance(imodel)
    scores: dict[str, dict[str, Tensor | None]] = {"uniform": {}, "l1": l1, "l1-quadrature": l1}
    if importance is None and ("activation" in kinds or "fisher" in kinds):
        try:
            importance = measure_importance(imodel, batches, loss, reference, fisher="fisher" in kinds)
        except Exception as err:  # noqa: BLE001 - optional candidates; the others still stand
            log.info("no activation or Fisher start (%s: %s)", type(err).__name__, err)
            kinds = [k for k in kinds if k not in ("activation", "fisher")]
    for k, found in (("activation", importance.activation if importance else {}),
                     ("fisher", importance.fisher if importance else {})):
        if k in kinds and not found:
            kinds = [x for x in kinds if x != k]
        scores[k] = {g: found.get(g, l1[g]) for g in l1}
    if not kinds:
        kinds = ["uniform"]
    options = {k: {n: start_partition(current[n], sizes[n], k, scores[k].get(n)) for n in sizes}
               for k in kinds}

    errors = {}
    t_kinds = timer.now()  # after the importance scores
    for i, k in enumerate(kinds):
        now = timer.now()
        if i and max_seconds is not None and now - t0 + (now - t_kinds) / i > max_seconds:
            log.info("best_start: measured %s of the starts %s within %.1f s", list(errors), list(kinds), max_seconds)
            break
        _apply(imodel, options, {n: k for n in sizes})
        errors[k] = distill_error(imodel, batches, reference, loss)
    best = min(errors, key=lambda k: errors[k])
    choice = StartChoice(kinds={n: best for n in sizes}, error=errors[best], errors=errors,
                         partitions={n: options[best][n] for n in sizes}, options=options)
    _apply(imodel, options, choice.kinds)
    choice.seconds = timer.now() - t0
    if per_group:
        return refine_start(imodel, batches, choice, reference=reference, loss=loss,
                            max_seconds=None if max_seconds is None else max_seconds - choice.seconds)
    return choice


def _apply(imodel: IntegralModel, options: Mapping[str, Mapping[str, Partition]], choice: Mapping[str, str]) -> None:
    for n, k in choice.items():
        imodel.set_partition(n, options[k][n])


def refine_start(imodel: IntegralModel, batches: Sequence[tuple], choice: StartChoice, *,
                 reference: Sequence[Any], max_seconds: float | None = None,
                 loss: str | Distillation = "mse") -> StartChoice:
    """Try ``choice``'s other starts (from :func:`best_start` with ``per_group=False``) one
    group at a time, keeping each change that lowers the calibration error, within
    ``max_seconds`` (a trial starts only if one more at the mean time of those before it fits;
    the first always does); ``imodel`` keeps the result, which is returned."""
    if not choice.options:
        raise ValueError("refine_start needs a StartChoice from best_start (it carries the candidate partitions); "
                         "this one has none")
    loss = _distance(loss)
    if max_seconds is not None:  # below 0 (what compress passes when the choices took longer): no trial
        check_number(max_seconds, "max_seconds")
    t0 = timer.now()
    sizes = imodel.sizes()
    kinds, options = list(choice.options), choice.options
    best = min(choice.errors, key=lambda k: choice.errors[k])
    current, error = dict(choice.kinds), choice.error
    trials = [(n, k) for n in sizes if sizes[n] < imodel.groups[n].max_size for k in kinds]
    done = 0
    for n, k in trials:
        if k == current[n]:
            continue
        # a trial starts only if one more, at the mean time of those so far, fits (the first always)
        elapsed = timer.now() - t0
        if max_seconds is not None and done and elapsed + elapsed / done > max_seconds:
            break
        trial = dict(current, **{n: k})
        _apply(imodel, options, trial)
        e = distill_error(imodel, batches, reference, loss)
        done += 1
        if e < error:
            current, error = trial, e
    _apply(imodel, options, current)
    return StartChoice(kinds=current, error=error, errors=choice.errors,
                       changed_groups=sum(1 for k in current.values() if k != best),
                       seconds=choice.seconds + timer.now() - t0,
                       partitions={n: options[k][n] for n, k in current.items()}, options=options)


def held_out_start(imodel: IntegralModel, start: StartChoice, judge: Sequence[tuple], judged: Sequence[Any],
                   loss: Distillation, count: int = 2) -> tuple[StartChoice, dict[str, float]]:
    """Of ``start``'s ``count`` starts with the lowest errors on the choice batches,
    the one with the lowest error on the held-out batches ``judge`` (``imodel`` is left at it; a tie
    keeps the better on the choice batches), and their held-out errors."""
    ranked = sorted(start.errors, key=lambda k: start.errors[k])[:count]
    held = {}
    for k in ranked:
        for n in start.kinds:
            imodel.set_partition(n, start.options[k][n])
        held[k] = distill_error(imodel, judge, judged, loss)
    best = min(ranked, key=lambda k: held[k])
    parts = {n: start.options[best][n] for n in start.kinds}
    for n, p in parts.items():
        imodel.set_partition(n, p)
    return dataclasses.replace(start, kinds={n: best for n in start.kinds}, error=start.errors[best],
                               partitions=parts), held
