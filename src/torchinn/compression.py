"""Post-training compression in one call: convert, choose sizes, choose where to start, tune.

:func:`compress` spends its time where it pays, and never hands back something worse than the
simplest baseline it could have produced:

1. **Sizes**: per-group sizes from sensitivities and one ratio for every group (what selection
   baselines use) are both computed for the budget (:func:`torchinn.budget.choose_sizes`), and
   the one with the lower calibration error wins (or the ``sizes`` given). Sensitivities are
   measured on one calibration batch instead of two when two would take more than a quarter of
   the time budget.
2. **Start**: every group starts from the best of several partitions
   (:mod:`torchinn.starts`): the INN resampled, points on the channels L1-norm selection keeps
   (with selection's unit scales this *is* L1 pruning, so with no tuning at all the result is
   at least as good as L1 selection on the calibration data), the same with quadrature scales,
   and activation-weighted selection.
3. **Grid tuning** (:func:`torchinn.train.tune_grid`) of the partitions, then **weight
   tuning** (:func:`torchinn.train.finetune`): distillation of every weight of the compressed
   network; ``TuneConfig.weights_share`` splits the budget. Each stage keeps its best state on
   held-out calibration batches, so neither ends worse than it started.

The report says which sizes and starts won, what each stage gained and how the seconds were
spent.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .budget import (
    _RATIOS,
    Metric,
    UnreachableTarget,
    _batches,
    check_budget,
    choose_sizes,
    compare_sizes,
    count_flops,
    measure_latency,
)
from .convert import ConvertConfig, convert
from .distill import Distillation, resolve_loss
from .inputs import check_batches
from .loop import split_validation
from .rounding import Multiple, check_multiple, resolve_multiple
from .starts import STARTS, best_start, check_starts, distill_error, kept_partitions, refine_start
from .train import TuneConfig, batch_inputs, finetune, make_grid_trainable, tune_grid

__all__ = ["CompressReport", "compress"]

log = logging.getLogger(__name__)

#: at most this many calibration batches are kept in memory from a one-shot iterator
MAX_BATCHES = 256
#: the calibration batches that choose sizes and starts (and measure the report's errors): the
#: choices compare a few candidates, so a few batches tell them apart at a fraction of the cost
SELECT_BATCHES = 4
#: the reconstruction candidate is refit on all calibration batches only when, fitted on the
#: choice batches, its held-out error is below this many times the best partitions'
SCREEN_MARGIN = 2.0
#: calibration batches that measure each group's sensitivity (one when that would take more than
#: SENSITIVITY_SHARE of the time budget, see _sensitivity_batches)
SENSITIVITY_BATCHES = 2
SENSITIVITY_SHARE = 0.25
#: share of the tuning budget (at least 2 s; 10 s without tuning) for trying starts group by group
REFINE_SHARE = 0.1
#: the starts are tried group by group only when the reconstruction candidate's held-out error is
#: not below the partitions' divided by this: on the five real networks of
#: benchmarks/real_networks.py, trying them group by group lowered the error by at most 3.3x
#: (waifu2x at 75% fewer parameters; 1x-2.6x elsewhere, and 1x on EfficientNet-Lite0, where the
#: reconstruction was 5-10x ahead and the trials took 4 s of 60)
REFINE_GAIN = 4.0


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
    error_before_tuning: float                  # calibration loss vs the original outputs (``loss``)
    error_after_tuning: float
    tuning: dict[str, Any] = field(default_factory=dict)  # steps in all, and per stage
    seconds: dict[str, float] = field(default_factory=dict)
    sizes_method: str = "given"                 # which sizes won: "sensitivity", "uniform", "given"
    sizes_errors: dict[str, float] = field(default_factory=dict)  # calibration error per sizes option
    starts: dict[str, str] = field(default_factory=dict)          # group -> starting partition
    start_errors: dict[str, float] = field(default_factory=dict)  # calibration error per start (all groups)
    #: held-out calibration error of the best partitions and of the reconstruction baseline
    reconstruct_errors: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # "grid" / "weights": what each did
    loss: str = "mse"                           # "mse": relative squared error; "kl": KL of class probabilities
    temperature: float | None = None            # the temperature of "kl" (torchinn.distill)
    loss_note: str = ""                         # why loss="auto" chose that loss and temperature
    multiple: dict[str, int] = field(default_factory=dict)  # group -> the multiple its size was rounded to (> 1)

    @property
    def ratio(self) -> float:
        return self.after / self.before

    def __str__(self) -> str:
        lines = [f"{'group':48s} {'before':>7s} {'after':>7s} start"]
        lines += [f"{n[:48]:48s} {b:7d} {a:7d} {self.starts.get(n, '-')}" for n, (b, a) in self.sizes.items()]
        lines.append(f"{self.metric}: {self.before:.4g} -> {self.after:.4g} ({self.ratio:.1%} of the original, "
                     f"target {self.target:.0%})")
        lines.append(f"parameters: {self.params_before:,} -> {self.params_after:,}")
        if self.multiple:
            ms = set(self.multiple.values())
            lines.append("sizes rounded to multiples of " + (str(ms.pop()) if len(ms) == 1 else str(self.multiple))
                         + " (or the full size)")
        temp = f" at temperature {self.temperature:.4g}" if self.loss == "kl" and self.temperature else ""
        lines.append(f"loss: {self.loss}{temp}" + (f" ({self.loss_note})" if self.loss_note else ""))
        if self.sizes_errors:
            lines.append("sizes: " + ", ".join(f"{m} {e:.4g}" for m, e in self.sizes_errors.items())
                         + f" -> {self.sizes_method}")
        if self.start_errors:
            lines.append("starts: " + ", ".join(f"{k} {e:.4g}" for k, e in self.start_errors.items()))
        if self.reconstruct_errors:
            lines.append("held out: " + ", ".join(f"{k} {e:.4g}" for k, e in self.reconstruct_errors.items()))
        what = "relative output error" if self.loss == "mse" else f"{self.loss} distillation loss"
        lines.append(f"{what}: {self.error_before_tuning:.4g} before tuning, {self.error_after_tuning:.4g} after")
        for name, st in self.stages.items():
            lines.append(f"  {name} tuning: {st['steps']} steps in {st['seconds']:.1f} s, validation error "
                         f"{_fmt(st.get('start_error'))} -> {_fmt(st.get('best_error'))}")
        lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _metric(model: nn.Module, metric: str, inputs: tuple) -> float:
    if metric == "params":
        return float(sum(p.numel() for p in model.parameters()))
    if metric == "flops":
        return float(count_flops(model, inputs))
    return measure_latency(model, inputs)


def _calibration(calibration: Iterable[Any] | None, example_inputs: tuple) -> tuple[Iterable[Any], list[tuple]]:
    """(what the tuning stages draw from, the batches that choose and validate, as inputs)."""
    if calibration is None:  # one batch: (inputs, no labels), so that several inputs stay inputs
        return [(tuple(example_inputs),)], [example_inputs]
    if iter(calibration) is calibration:  # one shot: keep what is needed to choose, validate and tune
        kept = []
        for batch in calibration:
            kept.append(batch)
            if len(kept) >= MAX_BATCHES:
                log.warning("compress keeps the first %d batches of a one-shot calibration iterator", MAX_BATCHES)
                break
        calibration = kept
    if isinstance(calibration, Sequence):
        if not calibration:
            raise ValueError("the calibration loader is empty")
        return calibration, [batch_inputs(b) for b in calibration[:SELECT_BATCHES]]
    return calibration, _batches(calibration, example_inputs, SELECT_BATCHES)


def _split(total: TuneConfig, share: float) -> TuneConfig | None:
    """A stage's share of the budget (``None`` when it gets nothing)."""
    steps = None if total.steps is None else round(total.steps * share)
    seconds = None if total.seconds is None else total.seconds * share
    if (steps is not None and steps < 1) or (seconds is not None and seconds <= 0) or share <= 0:
        return None
    return dataclasses.replace(total, steps=steps, seconds=seconds)


def _sensitivity_batches(groups: int, per_batch: float, tune: TuneConfig | Literal[False]) -> int:
    """How many calibration batches measure the sensitivities: 2, or 1 when 2 would take more than
    SENSITIVITY_SHARE of the time budget (every group at 3 ratios and 2 starts, one forward pass
    of a batch each). On EfficientNet-Lite0 (24 groups, 0.09 s per batch of 16) 2 batches took
    27-37 s of a 60 s budget; 1 batch chose sizes as good on held-out batches (error 0.480 against
    0.481 at 25% fewer parameters, 2.62 against 2.78 at 50%; one ratio for all: 2.32, 4.58)."""
    if tune is False or tune.seconds is None:
        return SENSITIVITY_BATCHES
    cost = groups * len(_RATIOS) * 2 * per_batch
    return SENSITIVITY_BATCHES if cost * SENSITIVITY_BATCHES <= SENSITIVITY_SHARE * tune.seconds else 1


def _try_reconstruct(imodel: Any, sizes: Mapping[str, int], source: Iterable[Any], cal: Sequence[tuple],
                     judge: Sequence[tuple], ref: Sequence[Any], mine: float, loss: Distillation
                     ) -> tuple[nn.Module | None, dict[str, float]]:
    """The reconstruction baseline at ``sizes`` and the errors measured on the way (on ``judge``,
    the held-out batches, against ``ref``; ``mine`` is the partitions' there), or ``None`` when
    it fails or is screened out."""
    from .baselines import reconstruct

    # fitted on every calibration batch, the held-out ones included: then it is exactly the
    # baseline as a user would run it, and the partitions win only where they beat it on data
    # the refit has seen
    fit = [batch_inputs(b) for b in (source[:64] if isinstance(source, Sequence) else cal)]
    errors = {"partitions": mine}
    # the refit costs a pass per calibration batch (8 s of a 60 s budget on EfficientNet-Lite0, 11 s
    # on a 7-layer super-resolution network): screen it on the few choice batches first, and refit
    # on all of them only when that is not clearly behind (a screened fit is a little worse than
    # the full one, hence the margin)
    screens = [list(cal)] if len(fit) > 2 * len(cal) else []
    for data in screens + [fit]:
        try:
            recon = reconstruct(imodel, dict(sizes), data).eval()
        except (RuntimeError, ValueError, NotImplementedError) as err:  # a candidate, not a requirement
            log.info("no reconstruction candidate (%s: %s)", type(err).__name__, err)
            return None, errors
        theirs = distill_error(recon, judge, ref, loss)
        if data is not fit:
            errors["reconstruct_screened"] = theirs
            if theirs > SCREEN_MARGIN * mine:
                log.info("reconstruction screened out: %.4g vs best partitions %.4g", theirs, mine)
                return None, errors
    errors["reconstruct"] = theirs
    log.info("reconstruction %.4g vs best partitions %.4g on held-out calibration batches", theirs, mine)
    return recon, errors


def compress(model: nn.Module, example_inputs: tuple | Tensor, target: float = 0.5,
             metric: Metric = "params", *, calibration: Iterable[Any] | None = None,
             tune: TuneConfig | None | Literal[False] = None, config: ConvertConfig | None = None,
             min_ratio: float = 0.1, sizes: Mapping[str, int] | None = None,
             starts: Sequence[str] = STARTS, reconstruct: bool = True,
             multiple: Multiple = 1, graph: bool = False) -> tuple[nn.Module, CompressReport]:
    """Convert ``model``, shrink it to ``target`` times the ``metric``, tune on ``calibration``
    (default: the example inputs) and return ``(plain_model, report)``.

    ``tune=None`` tunes for 60 s (half grid, half weights: ``TuneConfig.weights_share``).
    ``TuneConfig.seconds`` bounds everything after the conversion: choosing the sizes and the
    start, the reconstruction candidate and the tuning stages share it (tuning gets what the
    choices left, see ``report.seconds``), so ``compress`` with 60 s takes about 60 s plus the
    conversion. ``tune=False`` does not tune (sizes and starting partitions are still chosen on the
    calibration data). ``sizes`` (group -> size) skips the choice of sizes. ``starts`` limits
    the starting partitions tried (see :mod:`torchinn.starts`); ``reconstruct`` also tries L1
    selection with a least-squares refit of the layers that read pruned channels
    (:func:`torchinn.baselines.reconstruct`, fitted on the calibration data), and starts from it
    when it beats the best partitions on the held-out part (then all the tuning budget goes to
    the weights); the refit fits the calibration data, so when that is unlike the data the network
    will see, ``reconstruct=False`` is safer (on EfficientNet-Lite0 calibrated on other photos, the
    partitions alone stayed closer to the original: benchmarks/RESULTS.md). ``multiple`` (one int
    such as 8 or 16, or group name -> int; default 1) keeps every group at a multiple of it or at
    its full size (:mod:`torchinn.rounding`): the sizes are chosen among those, and given ``sizes``
    are rounded to them. ``model`` is not modified.

    The network handed back is a copy of ``model``'s own class with smaller layers (see
    :meth:`torchinn.IntegralModel.to_discrete`; batch norms come back as identity batch norms
    after the layers they were folded into, and ``report.params_after`` counts them), or, with
    ``graph=True`` or where the copy cannot follow the sizes (a ``UserWarning`` says why), the
    graph module. ``report.after`` is the metric of the graph module, batch norms folded: what
    the budget counts.
    """
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, Mapping):
        raise TypeError(f"compress passes inputs by position: give example_inputs as a tensor or a tuple "
                        f"(in the order of forward's parameters), got a dict of keyword inputs "
                        f"{sorted(example_inputs)}")
    check_budget(target, metric, min_ratio)  # before the conversion, and also when sizes are given
    check_starts(starts)
    if not isinstance(multiple, Mapping):
        check_multiple(multiple)  # before the conversion; group names are checked after it
    if tune is None:
        tune = TuneConfig(seconds=60.0)
    if tune is not False and not isinstance(tune, TuneConfig):
        raise TypeError(f"tune must be a TuneConfig, None (60 s) or False (no tuning), got {type(tune).__name__}")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    imodel = convert(model, example_inputs, config)
    seconds["convert"] = time.perf_counter() - t0
    groups = imodel.groups
    multiples = resolve_multiple(multiple, list(groups), lambda name: groups[name].name)
    t_budget = time.perf_counter()  # TuneConfig.seconds counts from here
    source, cal = _calibration(calibration, example_inputs)
    check_batches(imodel, cal)  # the first batches, before anything runs on them
    if isinstance(source, Sequence):
        check_batches(imodel, [batch_inputs(b) for b in source])
    full = imodel.to_discrete(graph=True).eval()  # the teacher, and the metric before
    before = _metric(full, metric, example_inputs)
    t0 = time.perf_counter()
    with torch.no_grad():
        reference = [full(*b) for b in cal]
    per_batch = (time.perf_counter() - t0) / len(cal)
    # one loss (and temperature) for every choice and both tuning stages, from the teacher's outputs
    loss = resolve_loss(tune.loss, reference, tune.temperature) if tune is not False else resolve_loss("auto", reference)

    t0 = time.perf_counter()
    if sizes is None:
        options, errors = {}, []
        n_sens = _sensitivity_batches(len(groups), per_batch, tune)
        for m in ("sensitivity", "uniform"):
            try:
                options[m] = choose_sizes(imodel, target, metric, calibration=[(b,) for b in cal],  # as loader batches
                                          example_inputs=example_inputs,
                                          min_ratio=min_ratio, method=m, loss=loss, multiple=multiples,
                                          batches=n_sens)
            except UnreachableTarget as err:  # e.g. one ratio for all cannot reach a latency target
                errors.append(err)
        if not options:
            raise errors[0]
        sizes_method, sizes_errors = compare_sizes(imodel, options, cal, starts, loss, reference)
        chosen = options[sizes_method]
    else:
        with kept_partitions(imodel):  # checked and rounded as resize does it
            chosen = imodel.resize(dict(sizes), multiple=multiples)
        sizes_method, sizes_errors = "given", {}
    seconds["choose_sizes"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    imodel.resize(dict(chosen))
    choice = best_start(imodel, cal, kinds=starts, reference=reference, per_group=False, loss=loss)
    seconds["choose_start"] = time.perf_counter() - t0

    holdout = tune.holdout if tune is not False else TuneConfig().holdout
    train_source, held_out = (split_validation(source, holdout) if isinstance(source, Sequence) else (source, None))
    recon, versus = None, {}
    if reconstruct:
        t0 = time.perf_counter()
        judge = [batch_inputs(b) for b in held_out] if held_out else list(cal)
        with torch.no_grad():
            judged = [full(*b) for b in judge]
        mine = distill_error(imodel, judge, judged, loss)
        recon, versus = _try_reconstruct(imodel, chosen, source, cal, judge, judged, mine, loss)
        seconds["reconstruct"] = time.perf_counter() - t0
    # trying the starts group by group is not worth its seconds when the reconstruction is further
    # ahead than that could make up (REFINE_GAIN)
    if recon is None or REFINE_GAIN * versus["reconstruct"] >= mine:
        t0 = time.perf_counter()
        refine = 10.0 if tune is False or tune.seconds is None else max(2.0, REFINE_SHARE * tune.seconds)
        choice = refine_start(imodel, cal, choice, reference=reference, max_seconds=refine - choice.seconds,
                              loss=loss)
        seconds["refine_start"] = time.perf_counter() - t0
        if recon is not None and choice.changed_groups:
            mine = versus["partitions"] = distill_error(imodel, judge, judged, loss)
    if recon is not None and versus["reconstruct"] >= mine:
        recon = None
    err0 = choice.error
    start_errors = dict(choice.errors)
    starts_used = dict(choice.kinds)
    if recon is not None:
        starts_used = {n: "reconstruct" for n in starts_used}
        err0 = distill_error(recon, cal, reference, loss)

    stages: dict[str, dict[str, Any]] = {}
    budget = tune  # what the tuning stages get: the choices above came out of tune.seconds
    if tune is not False and tune.seconds is not None:
        left = tune.seconds - (time.perf_counter() - t_budget)
        log.info("%.1f s of the %.1f s budget left for tuning", max(0.0, left), tune.seconds)
        budget = dataclasses.replace(tune, seconds=left) if left > 0.05 else False
    if budget is not False:
        share = 1.0 if recon is not None else budget.weights_share  # a refit network has no grid to tune
        grid_cfg, weights_cfg = _split(budget, 1.0 - share), _split(budget, share)
        t_tune = time.perf_counter()
        if grid_cfg is not None:
            t0 = time.perf_counter()
            make_grid_trainable(imodel)
            stages["grid"] = tune_grid(imodel, train_source, teacher=full, config=grid_cfg, validation=held_out,
                                       loss_fn=loss)
            seconds["tune_grid"] = time.perf_counter() - t0
        imodel.eval()
        small = recon if recon is not None else imodel.to_discrete(graph=True).eval()
        if weights_cfg is not None:
            t0 = time.perf_counter()
            if budget.seconds is not None:  # what grid tuning left unspent goes to the weights
                weights_cfg = dataclasses.replace(weights_cfg, seconds=max(weights_cfg.seconds,
                                                                           budget.seconds - (t0 - t_tune)))
            stages["weights"] = finetune(small, train_source, teacher=full, config=weights_cfg, validation=held_out,
                                         loss_fn=loss)
            seconds["tune_weights"] = time.perf_counter() - t0
    else:
        small = recon if recon is not None else imodel.to_discrete(graph=True).eval()
    err1 = distill_error(small, cal, reference, loss)
    report = CompressReport(
        metric=metric, target=target,
        sizes={n: (g.max_size, g.size) for n, g in imodel.groups.items()},
        before=before, after=_metric(small, metric, example_inputs),
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in small.parameters()),
        error_before_tuning=err0, error_after_tuning=err1,
        tuning={"steps": sum(v.get("steps", 0) for v in stages.values()),
                **{k: v.get("steps", 0) for k, v in stages.items()}}, seconds=seconds,
        sizes_method=sizes_method, sizes_errors=sizes_errors, starts=starts_used,
        start_errors=start_errors, stages=stages, loss=loss.kind, reconstruct_errors=versus,
        temperature=loss.temperature if loss.kind == "kl" else None, loss_note=loss.note,
        multiple={n: m for n, m in multiples.items() if m > 1})
    if not math.isfinite(err1):
        log.warning("the compressed network's calibration error is not finite")
    if not graph:  # the user's own class (or the graph module, with a warning saying why)
        small = imodel.module_from(small.eval()).eval()
        report.params_after = sum(p.numel() for p in small.parameters())
    return small, report
