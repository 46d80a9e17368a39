"""Post-training compression in one call: convert, choose sizes, choose where to start, tune.

:func:`compress` spends its time where it pays, and never hands back something worse than the
simplest baseline it could have produced:

1. **Choices** (:mod:`torchinn.compression.choices`), within at most 40% of the time bound: one forward
   and backward pass per choice batch measures every channel's activation and Fisher importance
   (:mod:`torchinn.compression.importance`); per-group sizes from the Fisher estimates, one ratio for every
   group (what selection baselines use) and, when they fit, measured sensitivities are each tried
   at several starting partitions (:mod:`torchinn.compression.starts`: the INN resampled, L1-norm selection,
   which with selection's unit scales *is* L1 pruning, the same with quadrature scales,
   activation- and Fisher-weighted selection), and the lowest calibration error wins; the
   reconstruction baseline joins when it beats that on held-out batches it was not fitted on.
2. **Time**: ``TuneConfig.seconds`` bounds everything after the conversion; without tuning the
   bound is :data:`NO_TUNE_SECONDS` or :data:`NO_TUNE_PASSES` forward passes, whichever is
   longer, counted in the time the call ran, not the time it waited for a CPU
   (:mod:`torchinn.compression.clock`). What cannot fit is skipped and named in ``report.skipped``. Where 40% would leave
   fewer than :data:`MIN_TUNING_STEPS` steps of tuning, the choices get less (down to 20%); where
   even that does not leave them, the choices get all of it and nothing is tuned.
3. **Grid tuning** (:func:`torchinn.training.train.tune_grid`) of the partitions, then **weight
   tuning** (:func:`torchinn.training.train.finetune`): distillation of every weight of the compressed
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
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..sizing.metrics import Metric
from . import clock as timer, coverage
from .report import CompressReport
from .budget import check_budget, check_resizable
from .choices import FIT_BATCHES, choose
from ..model.convert import ConvertConfig, convert
from ..model.integral_model import IntegralModel
from ..model.inputs import check_batches
from ..model.memory import release_memory, weight_bytes
from ..training.distill import resolve_loss
from ..training.loop import split_validation
from ..sizing.metrics import count_flops, measure_latency
from ..sizing.rounding import Multiple, check_multiple, resolve_multiple
from .starts import STARTS, check_starts, distill_error, kept_partitions
from ..model.inputs import as_inputs, batch_inputs, padding_mask, run
from ..training.train import TuneConfig, finetune, make_grid_trainable, tune_grid

__all__ = ["CompressReport", "compress"]

log = logging.getLogger(__name__)

#: at most this many calibration batches are kept in memory from a one-shot iterator
MAX_BATCHES = 256
#: at most this many calibration batches choose sizes and starts (and measure the report's
#: errors): the choices compare a few candidates, so a few batches tell them apart at a fraction of
#: the cost; fewer when one forward pass of each would take more than CHOICE_PASSES_SHARE of the bound
#: (so are the held-out batches that judge the reconstruction, at least one)
SELECT_BATCHES = 4
CHOICE_PASSES_SHARE = 0.05
#: the share of the bound (TuneConfig.seconds) the choices may take when there is tuning after them
CHOICE_SHARE = 0.4
#: with a time budget, when fewer than this many tuning steps (each about STEP_PASSES forward
#: passes of a batch) would fit in what the choices leave, the choices give up part of their share,
#: down to MIN_CHOICE_SHARE, to make room for them; when even that leaves fewer, the choices take
#: the whole budget: a few steps of tuning are worth less than choices cut short
#: (docs/decisions/compress-constants.md)
MIN_TUNING_STEPS = 20
STEP_PASSES = 3.0
MIN_CHOICE_SHARE = 0.2
#: the bound on everything after the conversion when there is no time budget: ``tune=False`` or a
#: TuneConfig with ``seconds=None`` (the choices then take it all, or 40% before steps of tuning)
NO_TUNE_SECONDS = 30.0
#: ... or the time of this many forward passes of a calibration batch, when that is longer (a
#: 1 B-parameter model's one pass takes seconds: 30 s would not hold one importance pass)
NO_TUNE_PASSES = 40


def _metric(model: nn.Module, metric: str, inputs: tuple) -> float:
    if metric == "params":
        return float(sum(p.numel() for p in model.parameters()))
    if metric == "flops":
        return float(count_flops(model, inputs))
    return measure_latency(model, inputs)


def _bound(tune: TuneConfig | Literal[False]) -> float:
    """Seconds for everything after the conversion."""
    if tune is False or tune.seconds is None:
        return NO_TUNE_SECONDS
    return float(tune.seconds)


def _calibration(calibration: Iterable[Any] | None, example_inputs: tuple, tune: TuneConfig | Literal[False]
                 ) -> tuple[Iterable[Any], Iterable[Any], list[Any] | None]:
    """(all the batches, the training ones, the held-out ones or ``None``): a one-shot iterator is
    read into a list first; a list's last ``holdout`` share is held out (:func:`split_validation`)."""
    if calibration is None:  # one batch: (inputs, no labels), so that several inputs stay inputs
        return [(example_inputs,)], [(example_inputs,)], None
    if iter(calibration) is calibration:  # one shot: keep what is needed to choose, validate and tune
        kept = []
        for batch in calibration:
            kept.append(batch)
            if len(kept) >= MAX_BATCHES:
                log.warning("compress keeps the first %d batches of a one-shot calibration iterator", MAX_BATCHES)
                break
        calibration = kept
    if isinstance(calibration, Sequence) and not calibration:
        raise ValueError("the calibration loader is empty")
    holdout = tune.holdout if tune is not False else TuneConfig().holdout
    train, held_out = split_validation(calibration, holdout)
    return calibration, train, held_out


def _first(batches: Iterable[Any], n: int, skip: int = 0) -> list[Any]:
    """Batches ``skip`` to ``skip + n`` of an iterable (a loader that is not a list)."""
    out = []
    for i, b in enumerate(batches):
        if i >= skip + n:
            break
        if i >= skip:
            out.append(b)
    return out


def _choice_batches(full: nn.Module, train: Iterable[Any], example_inputs: tuple, bound: float
                    ) -> tuple[list[tuple], list[Any], float]:
    """The choice batches (the first training batches: at most SELECT_BATCHES, fewer when their
    forward passes would take more than CHOICE_PASSES_SHARE of ``bound``), the full network's
    outputs on them, and the seconds of one forward pass."""
    batches = [batch_inputs(b) for b in (train[:SELECT_BATCHES] if isinstance(train, Sequence)
                                         else _first(train, SELECT_BATCHES))]
    reference: list[Any] = []
    t0 = timer.now()
    with torch.no_grad():
        for b in batches:
            reference.append(run(full, b))
            per_batch = (timer.now() - t0) / len(reference)
            if per_batch * (len(reference) + 1) > CHOICE_PASSES_SHARE * bound:
                break
    return batches[:len(reference)], reference, per_batch


def _choice_share(left: float, per_batch: float, timed: bool) -> tuple[float, float]:
    """(the share of ``left`` seconds the choices get, the tuning steps that fit in the rest):
    CHOICE_SHARE; less, down to MIN_CHOICE_SHARE, when MIN_TUNING_STEPS steps of STEP_PASSES
    forward passes of ``per_batch`` seconds would not fit otherwise; all of it when they do not fit
    even then (``timed``: a time budget; without one, the steps are not bounded by the time)."""
    step = STEP_PASSES * per_batch
    if not timed or step <= 0:
        return CHOICE_SHARE, math.inf
    if left <= 0:
        return 1.0, 0.0
    share = min(CHOICE_SHARE, 1.0 - MIN_TUNING_STEPS * step / left)
    if share < MIN_CHOICE_SHARE:
        return 1.0, (1.0 - CHOICE_SHARE) * left / step
    return share, (1.0 - share) * left / step


def _split(total: TuneConfig, share: float) -> TuneConfig | None:
    """A stage's share of the budget (``None`` when it gets nothing)."""
    steps = None if total.steps is None else round(total.steps * share)
    seconds = None if total.seconds is None else total.seconds * share
    if (steps is not None and steps < 1) or (seconds is not None and seconds <= 0) or share <= 0:
        return None
    return dataclasses.replace(total, steps=steps, seconds=seconds)


def compress(model: nn.Module, example_inputs: tuple | Tensor | Mapping[str, Any], target: float = 0.5,
             metric: Metric = "params", *, calibration: Iterable[Any] | None = None,
             tune: TuneConfig | None | Literal[False] = None, config: ConvertConfig | None = None,
             min_ratio: float = 0.1, sizes: Mapping[str, int] | None = None,
             starts: Sequence[str] = STARTS, reconstruct: bool = True,
             multiple: Multiple = 1, graph: bool = False) -> tuple[nn.Module, CompressReport]:
    """Convert ``model``, shrink it to ``target`` times the ``metric``, tune on ``calibration``
    (default: the example inputs) and return ``(plain_model, report)``.

    ``example_inputs`` is a tensor, a tuple of positional inputs or a dict of keyword inputs
    (``{"input_ids": ids, "attention_mask": mask}``: a transformers model is converted and called
    with them, as :func:`torchinn.convert` does). ``calibration`` yields batches: tensors,
    ``(inputs, labels)`` pairs or dicts of keyword inputs as a Hugging Face collator gives them
    (``labels`` left out; :func:`torchinn.model.inputs.batch_inputs`). Where a batch has an
    ``attention_mask``, its padded positions count in no loss or choice (docs/decisions/transformers.md).

    ``tune=None`` tunes for 60 s (half grid, half weights: ``TuneConfig.weights_share``).
    ``TuneConfig.seconds`` bounds everything after the conversion: the choices of sizes and
    start (at most 40% of it, less where that leaves fewer than 20 tuning steps,
    :mod:`torchinn.compression.choices`), the reconstruction candidate, the tuning
    stages and the final checks share it (tuning gets what the choices left, see
    ``report.seconds``), so ``compress`` with 60 s takes about 60 s plus the conversion.
    ``tune=False`` does not tune: sizes and starting partitions are still chosen on the
    calibration data, within :data:`NO_TUNE_SECONDS` (30 s) or :data:`NO_TUNE_PASSES` (40)
    forward passes of a calibration batch, whichever is longer (also the bound of a
    ``TuneConfig`` with ``seconds=None``, whose steps are then not bounded in time). That bound
    counts the seconds the call ran, not those it waited for a CPU (on Linux;
    :mod:`torchinn.compression.clock`): on a loaded machine it takes longer and, with one thread,
    makes the same choices (with several, threads spinning at barriers count as running: a
    warning says so), and ``report.seconds["waited"]`` says how long it waited. The choices use the
    training share of a list of calibration batches; its held-out share (``TuneConfig.holdout``)
    judges the reconstruction and validates the tuning. ``sizes`` (group -> size) skips the choice of sizes. ``starts`` limits
    the starting partitions tried (see :mod:`torchinn.compression.starts`); ``reconstruct`` also tries L1
    selection with a least-squares refit of the layers that read pruned channels
    (:func:`torchinn.compression.baselines.reconstruct`, fitted on the training batches), and starts from it
    when it beats the best partitions on the held-out ones (then all the tuning budget goes to
    the weights; with a single calibration batch there is nothing held out, and no
    reconstruction). Every choice made from data fits the calibration data: where they do not show
    the classes the network will see (a warning says so: :mod:`torchinn.compression.coverage`),
    ``starts=("l1",), reconstruct=False`` selects by weights alone (EfficientNet-Lite0 in
    benchmarks/RESULTS.md). ``multiple`` (one int
    such as 8 or 16, or group name -> int; default 1) keeps every group at a multiple of it or at
    its full size (:mod:`torchinn.sizing.rounding`): the sizes are chosen among those, and given ``sizes``
    are rounded to them. ``model`` is not modified.

    The network handed back is a copy of ``model``'s own class with smaller layers (see
    :meth:`torchinn.IntegralModel.to_discrete`; batch norms come back as identity batch norms
    after the layers they were folded into, and ``report.params_after`` counts them), or, with
    ``graph=True`` or where the copy cannot follow the sizes (a ``UserWarning`` says why), the
    graph module. ``report.after`` is the metric of the graph module, batch norms folded: what
    the budget counts.
    """
    example_inputs = as_inputs(example_inputs)
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
    check_resizable(imodel)
    groups = imodel.groups
    multiples = resolve_multiple(multiple, list(groups), lambda name: groups[name].name)
    wall = time.perf_counter()
    # the bound of a call without a time budget is counted in the time it ran, not in the time it
    # waited for a CPU: a loaded machine takes longer and does the same work (compression/clock.py)
    untimed = tune is False or tune.seconds is None
    with timer.run_time(leave_out=untimed):
        small, report = _compress(imodel, model, example_inputs, target, metric, calibration, tune, min_ratio,
                                  sizes, starts, reconstruct, multiples, graph, seconds)
        spent, waited = time.perf_counter() - wall, timer.waited()
    report.seconds["after_convert"] = spent
    report.clock = "run" if untimed else "wall"
    if waited >= 0.05:
        report.seconds["waited"] = waited
    warning = timer.waits_warning(waited, spent, None if untimed else tune.seconds)
    if warning:
        log.warning("compress %s", warning)
    return small, report


def _compress(imodel: IntegralModel, model: nn.Module, example_inputs: tuple, target: float, metric: Metric,
              calibration: Iterable[Any] | None, tune: TuneConfig | Literal[False], min_ratio: float,
              sizes: Mapping[str, int] | None, starts: Sequence[str], reconstruct: bool,
              multiples: Mapping[str, int], graph: bool, seconds: dict[str, float]
              ) -> tuple[nn.Module, CompressReport]:
    """:func:`compress` after the conversion (``imodel``), on the clock of :mod:`torchinn.compression.clock`."""
    t_budget = timer.now()  # the bound counts from here
    bound = _bound(tune)
    source, train_source, held_out = _calibration(calibration, example_inputs, tune)
    check_batches(imodel, [batch_inputs(b) for b in (source if isinstance(source, Sequence) else
                                                     _first(source, SELECT_BATCHES))])  # before anything runs
    # the teacher, and the metric before: it shares its tensors with imodel (no copy of the weights)
    full = imodel.shared_discrete().eval()
    t0 = timer.now()
    before = _metric(full, metric, example_inputs)
    metric_seconds = timer.now() - t0
    t_ref = timer.now()  # the teacher's passes and the loss: "reference" in report.seconds
    cal, reference, per_batch = _choice_batches(full, train_source, example_inputs, bound)
    nbytes = weight_bytes(model)
    release_memory(nbytes)  # what the teacher's first passes left behind
    if tune is False or tune.seconds is None:  # no time budget given: a bound that one pass fits in
        bound = max(bound, NO_TUNE_PASSES * per_batch)
    # one loss (and temperature) for every choice and both tuning stages, from the teacher's outputs
    masks = [padding_mask(b) for b in cal]  # padded positions tell nothing about the loss to use
    loss = resolve_loss(tune.loss if tune is not False else "auto", reference,
                        tune.temperature if tune is not False else None, masks)
    shown = coverage.narrow(reference, loss)
    if shown:
        log.warning("compress: %s", coverage.warning(*shown))
    # held out from every choice; a loader that is not a list: the two batches after the choice ones
    judge = [batch_inputs(b) for b in ((held_out or []) if isinstance(source, Sequence) else _first(source, 2, len(cal)))]
    # as the choice batches: fewer when their passes would take more than CHOICE_PASSES_SHARE of the bound
    # (each is run by the teacher here and by every candidate judged; at least one)
    judge = judge[:max(1, int(CHOICE_PASSES_SHARE * bound / per_batch))] if per_batch > 0 else judge
    with torch.no_grad():
        judged = [run(full, b) for b in judge]
    seconds["reference"] = timer.now() - t_ref
    fit = ([batch_inputs(b) for b in train_source[:FIT_BATCHES]] if isinstance(train_source, Sequence) else list(cal))
    if sizes is not None:
        with kept_partitions(imodel):  # checked and rounded as resize does it
            sizes = imodel.resize(dict(sizes), multiple=multiples)
    # what comes after the tuning: the report's error, the metric and the user's class
    reserve = (len(cal) + 2) * per_batch + metric_seconds
    left = bound - (timer.now() - t_budget) - reserve
    timed = tune is not False and tune.seconds is not None
    share, steps = _choice_share(left, per_batch, timed) if tune is not False else (1.0, 0.0)
    few = timed and share == 1.0
    if timed and share < CHOICE_SHARE:
        log.info("compress: the choices get %.0f%% of %.1f s so that %d tuning steps fit", 100 * share, left,
                 MIN_TUNING_STEPS)
    if few:  # a handful of steps would not pay for what the choices give up to make room for them
        no_tune = max(NO_TUNE_SECONDS, NO_TUNE_PASSES * per_batch)
        if no_tune > tune.seconds:  # the user asked for less than tune=False would take
            log.warning("compress: TuneConfig(seconds=%g) leaves no time for tuning on this network (a forward "
                        "pass of a calibration batch takes %.1f s; %d tuning steps need about %.0f s): the budget "
                        "goes to the choices; tune=False chooses within %.0f s, and a larger budget tunes",
                        tune.seconds, per_batch, MIN_TUNING_STEPS, MIN_TUNING_STEPS * STEP_PASSES * per_batch,
                        no_tune)
    made = choose(imodel, target=target, metric=metric, sizes=sizes, cal=cal, reference=reference, fit=fit,
                  judge=judge, judged=judged, loss=loss, example_inputs=example_inputs, min_ratio=min_ratio,
                  multiples=multiples, kinds=starts, reconstruct=reconstruct, seconds=max(0.0, share * left),
                  per_batch=per_batch, teacher=full, nbytes=nbytes, spare=tune is False or few)
    judged = None  # the teacher's outputs on the held-out batches judged the choices only (a LM's: 201 MB a batch)
    seconds.update(made.seconds)
    if few:  # the choices may end early (a faster pass than measured): say what was left unused
        unused = bound - (timer.now() - t_budget) - reserve
        ended = f" and ended with {unused:.0f} s of it unused" if unused >= 1.0 else ""
        made.skipped.append(f"tuning (about {steps:.0f} steps would fit after the choices, fewer than "
                            f"{MIN_TUNING_STEPS}: the choices were given the budget{ended}, and no step is started "
                            f"after them; calibration batches of fewer rows make a step cheaper)")
    choice, recon, versus = made.start, made.reconstruction, made.held_out
    err0 = choice.error
    start_errors = dict(choice.errors)
    starts_used = dict(choice.kinds)
    if recon is not None:
        starts_used = {n: "reconstruct" for n in starts_used}
        err0 = distill_error(recon, cal, reference, loss)
    stages: dict[str, dict[str, Any]] = {}
    budget = tune  # what the tuning stages get: what the choices left of the bound, less the reserve
    if tune is not False and tune.seconds is not None:
        left = bound - (timer.now() - t_budget) - reserve
        log.info("%.1f s of the %.1f s budget left for tuning", max(0.0, left), tune.seconds)
        budget = dataclasses.replace(tune, seconds=left) if left > 0.05 and not few else False
    if budget is not False:
        share = 1.0 if recon is not None else budget.weights_share  # a refit network has no grid to tune
        grid_cfg, weights_cfg = _split(budget, 1.0 - share), _split(budget, share)
        t_tune = timer.now()
        if grid_cfg is not None:
            t0 = timer.now()
            make_grid_trainable(imodel)
            stages["grid"] = tune_grid(imodel, train_source, teacher=full, tune=grid_cfg, validation=held_out,
                                       loss_fn=loss)
            seconds["tune_grid"] = timer.now() - t0
        imodel.eval()
        small = recon if recon is not None else imodel.to_discrete(graph=True).eval()
        if weights_cfg is not None:
            t0 = timer.now()
            if budget.seconds is not None:  # what grid tuning left unspent goes to the weights
                weights_cfg = dataclasses.replace(weights_cfg, seconds=max(weights_cfg.seconds,
                                                                           budget.seconds - (t0 - t_tune)))
            stages["weights"] = finetune(small, train_source, teacher=full, tune=weights_cfg, validation=held_out,
                                         loss_fn=loss)
            seconds["tune_weights"] = timer.now() - t0
    else:
        full = None  # no tuning: its outputs on the choice batches (reference) are all that is left of it
        # imodel is dropped on return: small takes its tensors (the samples, and its own values where
        # sampling leaves them as they are) instead of copies beside them
        small = recon if recon is not None else imodel.shared_discrete().eval()
    # the teacher, the reconstruction (small, if it won) and the samples at the compressed sizes
    # (small holds what it uses) are not needed any more: their memory before the copy below
    full = made.reconstruction = recon = None
    imodel.clear_samples()
    release_memory(nbytes)
    # without tuning, small is the network err0 was measured on (the reconstruction, or the chosen partitions)
    err1 = distill_error(small, cal, reference, loss) if stages else err0
    report = CompressReport(
        metric=metric, target=target,
        sizes={n: (g.max_size, g.size) for n, g in imodel.groups.items()},
        before=before, after=_metric(small, metric, example_inputs),
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in small.parameters()),
        error_before_tuning=err0, error_after_tuning=err1,
        tuning={"steps": sum(v.get("steps", 0) for v in stages.values()),
                **{k: v.get("steps", 0) for k, v in stages.items()}}, seconds=seconds,
        sizes_method=made.sizes_method, sizes_errors=made.sizes_errors, starts=starts_used,
        start_errors=start_errors, stages=stages, loss=loss.kind, reconstruct_errors=versus,
        temperature=loss.temperature if loss.kind == "kl" else None, loss_note=loss.note,
        multiple={n: m for n, m in multiples.items() if m > 1}, skipped=made.skipped, bound=bound)
    if not math.isfinite(err1):
        log.warning("the compressed network's calibration error is not finite")
    if not graph:  # the user's own class (or the graph module, with a warning saying why)
        small = imodel.module_from(small.eval(), share=True).eval()  # small is not kept: no copy of it
        report.params_after = sum(p.numel() for p in small.parameters())
    return small, report
