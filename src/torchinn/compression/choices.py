"""What :func:`torchinn.compress` chooses before tuning, within a time budget.

The choices are cheap to make and expensive to measure: every candidate (a set of sizes, a
starting partition, the reconstruction baseline) is judged by running the network on calibration
batches. :func:`choose` spends at most ``seconds`` on them, in the order of what they are worth
per second, and measures once what several choices share:

1. **Importance** (:mod:`torchinn.compression.importance`): one forward and one backward pass per choice
   batch (and as many training batches again, time allowing) give every channel's activation
   and Fisher scores, then the activation scores read the other training batches forward only,
   time allowing. They rank the channels of the ``"activation"`` and ``"fisher"`` starts. Where one batch
   does not fit its share (a language model on one core), its first samples that do (at least
   one; a batch run in chunks of samples stops between them at its deadline): without scores
   the starts select by weight norms alone.
2. **Sizes**: one ratio for every group (``"uniform"``) and the Fisher greedy allocation cost no
   pass; the measured sensitivities (``"sensitivity"``: six passes per group and batch) join only
   when they fit in a quarter of what is left.
3. **Sizes x starts**: each set of sizes is tried at its starts, the most promising first, each
   set getting an equal share of the time left (its first start is always measured; the sets
   after the first only while a measurement fits, and the time the reconstruction's first fit
   needs is kept clear of them); the best two on the choice batches, which the scores were measured
   on, are measured again on the held-out batches, which decide between them.
4. **Reconstruction** (:func:`torchinn.compression.baselines.reconstruct`), fitted on the training batches
   only and compared with the partitions on the held-out batches, which no candidate was fitted
   or chosen on (when its whole first fit does not fit the time left, fitted in part: the layers it
   does not reach keep their selected weights; skipped, judging included, when not even
   ``RECONSTRUCT_LEAST`` passes of it fit): first fitted on the choice batches (screening), refit on all the training
   batches when the screened fit is close and the time left allows; where no tuning follows, fitted again on
   the other starts' channels (the held-out runner-up's, then L1's) while the time allows (:mod:`torchinn.compression.refit_candidate`).
5. **Group by group** starts (:func:`torchinn.compression.starts.refine_start`) with the time left.

Every stage that cannot fit its share is skipped and named in :attr:`Choices.skipped`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from . import clock as timer
from .budget import UnreachableTarget, choose_sizes
from ..training.distill import Distillation
from .importance import Importance, measure_importance
from ..model.integral_model import IntegralModel
from ..model.inputs import batch_size, leading_samples
from ..model.memory import release_memory
from . import refit_candidate
from .starts import StartChoice, best_start, distill_error, held_out_start, kept_partitions, refine_start

__all__ = ["Choices", "choose"]

log = logging.getLogger(__name__)

#: the order in which starts are measured when the time does not allow all of them
START_ORDER = ("fisher", "activation", "l1", "uniform", "l1-quadrature")
#: share of the choice budget the importance pass may take (it is skipped when one batch does not
#: fit: the sizes are then one ratio for all and the starts those that need no data)
IMPORTANCE_SHARE = 0.3
#: one batch of the importance pass (forward, backward and the per-channel sums) costs about this
#: many forward passes
IMPORTANCE_PASSES = 4.0
#: the importance pass reads up to this many times the choice batches (the next training batches,
#: while its share of the time allows): channels silent on a few batches may not be on others
#: (evidence for this and the other constants: docs/decisions/compress-constants.md)
IMPORTANCE_BATCHES = 2
#: share of the choice budget the activation scores may take after the Fisher pass, on the training batches
#: it did not read, forward only (ACTIVATION_PASSES forward passes a batch): DNSMOS in benchmarks/RESULTS.md
ACTIVATION_SHARE = 0.2
ACTIVATION_PASSES = 1.5
#: ... only where the choices' budget holds this many forward passes of a choice batch (with fewer, the
#: Fisher start and the reconstruction take them all: SmolLM2-135M with 60 s on one core holds 17)
ACTIVATION_MIN_PASSES = 25
#: the best starts on the choice batches measured again on the held-out ones, which decide: the scores
#: were measured on the choice batches, so their errors there flatter them (silent channels look free)
HELD_OUT_STARTS = 2
#: the measured sensitivities join the sizes only when their estimated cost is below this share
#: of the time left
SENSITIVITY_SHARE = 0.25
#: trying the starts group by group is skipped when the reconstruction's held-out error is below
#: the partitions' divided by this (it could not make up the difference)
REFINE_GAIN = 4.0
#: at most this many training batches fit the reconstruction
FIT_BATCHES = 64


@dataclass
class Choices:
    """What :func:`choose` chose, measured and skipped."""

    sizes: dict[str, int]
    sizes_method: str
    sizes_errors: dict[str, float]
    start: StartChoice
    reconstruction: nn.Module | None = None
    held_out: dict[str, float] = field(default_factory=dict)   # "partitions", "reconstruct", ...
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    importance: Importance | None = None


class _Clock:
    def __init__(self, seconds: float) -> None:
        self.end = timer.now() + seconds

    def left(self) -> float:
        return self.end - timer.now()


def _importance(imodel: IntegralModel, cal: Sequence[tuple], reference: Sequence[Any], loss: Distillation,
                seconds: float, skipped: list[str], teacher: Any, per_batch: float,
                more: Sequence[tuple] = (), whole: float = 0.0, forward: Sequence[tuple] = (),
                forward_seconds: float = 0.0) -> Importance | None:
    """The importance scores on the choice batches ``cal``, then on the batches of ``more`` as
    long as ``seconds`` allow (a channel silent on a few batches may not be on others). When one
    batch does not fit in ``seconds`` (by :data:`IMPORTANCE_PASSES`), its first samples that do: where
    the batch runs in chunks of samples (a LM), as many chunks as their measured time fits, else as
    many samples as the guess allows; at least one sample when that fits in ``whole`` (the choices'
    budget): without scores the starts select by weight norms alone, which cost a real 135 M LM 3
    orders of magnitude of perplexity (benchmarks/RESULTS.md). A batch run in chunks stops between
    them when the next would end past ``seconds`` (the samples measured are named in ``skipped``).
    Then the activation scores alone read the batches of ``more`` left unread and ``forward``,
    forward only, within ``forward_seconds`` (when one such pass fits in it and ``whole`` holds
    :data:`ACTIVATION_MIN_PASSES` forward passes of a batch)."""
    guess = IMPORTANCE_PASSES * per_batch
    batches, reference = list(cal) + list(more), list(reference)
    leading = None  # where the batch does not run in chunks: its first samples, as many as the guess allows
    if guess > seconds:  # the first samples of one batch, as many as the share allows
        n = batch_size(cal[0]) if cal else 0
        k = int(n * seconds / guess) if guess > 0 else 0
        if k < 1 and n and guess / n <= whole:  # one sample even past the share: no scores is worse
            k = 1
        if k < 1 or leading_samples(cal[0], k) is None:
            skipped.append(f"importance scores (one batch takes about {guess:.1f} s, {seconds:.1f} s allowed): "
                           "sizes from one ratio, starts without data")
            return None
        # where the batch runs in chunks of samples, their measured time decides how many are made
        batches, reference, leading = [cal[0]], reference[:1], k
    if (leading is not None or ACTIVATION_PASSES * per_batch > forward_seconds
            or whole < ACTIVATION_MIN_PASSES * per_batch):
        forward, forward_seconds = (), 0.0
    try:  # the choice batches first (their outputs are known), then the other training batches
        got = measure_importance(imodel, batches, loss, reference, max_seconds=seconds, network=teacher,
                                 leading=leading, activation_batches=forward, activation_seconds=forward_seconds)
    except Exception as err:  # noqa: BLE001 - the choices fall back on L1 scores and uniform sizes
        log.info("no importance scores (%s: %s)", type(err).__name__, err)
        skipped.append(f"importance ({type(err).__name__}: {err})")
        return None
    if got.cut is not None:  # by the guess (a batch not in chunks) or by the time its chunks took
        done, n = got.cut
        skipped.append(f"importance on the first {done} of {n} samples of batch {got.batches} only ({got.seconds:.1f} s "
                       f"measured, {seconds:.1f} s allowed; a whole batch by the passes' guess: {guess:.1f} s)")
    return got


def _size_options(imodel: IntegralModel, target: float, metric: str, cal: Sequence[tuple], example_inputs: tuple,
                  min_ratio: float, loss: Distillation, multiples: Mapping[str, int], importance: Importance | None,
                  sensitivity_seconds: float, clock: _Clock, skipped: list[str]) -> dict[str, dict[str, int]]:
    methods = ["uniform"]
    if importance is not None and importance.fisher:
        methods.insert(0, "fisher")
    if sensitivity_seconds <= SENSITIVITY_SHARE * clock.left():
        methods.insert(0, "sensitivity")
    else:
        skipped.append(f"measured sensitivities (about {sensitivity_seconds:.1f} s)")
    options, errors = {}, []
    for m in methods:
        try:
            options[m] = choose_sizes(imodel, target, metric, calibration=[(b,) for b in cal],
                                      example_inputs=example_inputs, min_ratio=min_ratio, method=m, loss=loss,
                                      multiple=multiples, max_batches=len(cal), importance=importance)
        except UnreachableTarget as err:  # e.g. one ratio for all cannot reach a latency target
            errors.append(err)
    if not options:
        raise errors[0]
    return options


def _sizes_and_starts(imodel: IntegralModel, options: Mapping[str, Mapping[str, int]], cal: Sequence[tuple],
                      reference: Sequence[Any], loss: Distillation, kinds: Sequence[str], importance: Importance | None,
                      clock: _Clock, share: float, per_batch: float, skipped: list[str], hold: float = 0.0
                      ) -> tuple[str, dict[str, float], StartChoice]:
    """The sizes and starts with the lowest error on ``cal``; ``imodel`` is left at them. ``share``
    of the time left, less ``hold`` seconds kept for what comes after, goes to the measurements
    beyond the first."""
    order = [k for k in START_ORDER if k in kinds] + [k for k in kinds if k not in START_ORDER]
    results: dict[str, StartChoice] = {}
    took: list[float] = []  # seconds of each measurement made
    for i, (method, sizes) in enumerate(options.items()):
        each = max(len(cal) * per_batch, sum(took) / max(1, len(took)))  # one more: its passes, or the mean so far
        if results and clock.left() - hold < each:  # the first (most promising) is always measured
            skipped.append(f"sizes {', '.join(list(options)[i:])} (measuring them takes about "
                           f"{each:.1f} s each, {max(0.0, clock.left()):.1f} s left)")
            break
        seconds = share * max(0.0, clock.left() - hold) / (len(options) - i)
        t0 = timer.now()
        with kept_partitions(imodel):
            imodel.resize(dict(sizes))
            results[method] = best_start(imodel, cal, kinds=order, per_group=False, reference=reference, loss=loss,
                                         importance=importance, max_seconds=seconds)
        took.append(timer.now() - t0)
    table = {m: c.error for m, c in results.items()}
    winner = min(table, key=lambda m: table[m])
    imodel.resize(dict(options[winner]))
    for n, p in results[winner].partitions.items():
        imodel.set_partition(n, p)
    return winner, table, results[winner]


def choose(imodel: IntegralModel, *, target: float, metric: str, sizes: Mapping[str, int] | None,
           cal: Sequence[tuple], reference: Sequence[Any], fit: Sequence[tuple], judge: Sequence[tuple],
           judged: Sequence[Any], loss: Distillation, example_inputs: tuple, min_ratio: float, multiples: Mapping[str, int],
           kinds: Sequence[str], reconstruct: bool, seconds: float, per_batch: float,
           teacher: Any = None, nbytes: int = 0, spare: bool = False) -> Choices:
    """Sizes, starting partitions and possibly the reconstruction for ``imodel`` within
    ``seconds`` (see the module); ``imodel`` is left at the chosen sizes and partitions.
    ``cal``: the choice batches (with the full network's outputs ``reference``); ``fit``: the
    training batches; ``judge``: held-out batches, ``judged`` the full network's outputs on them
    (no held-out batches: no reconstruction, it could only be judged on what it was fitted on);
    ``per_batch``: seconds of one forward pass of a batch; ``teacher``: the full-size graph
    module, when the caller holds one (the importance pass runs it, and the reconstruction reads
    its tensors, instead of a copy); ``nbytes``: the bytes of the network's weights (memory is given
    back to the system between the stages when they are many: :func:`~torchinn.model.memory.release_memory`);
    ``spare``: no tuning follows, so the time the choices leave would go unused (a second reconstruction
    may take it)."""
    clock = _Clock(seconds)
    spent: dict[str, float] = {}
    skipped: list[str] = []
    t0 = timer.now()
    importance = _importance(imodel, cal, reference, loss, IMPORTANCE_SHARE * seconds, skipped, teacher, per_batch,
                             more=fit[len(cal):IMPORTANCE_BATCHES * len(cal)], whole=seconds,
                             forward=fit[IMPORTANCE_BATCHES * len(cal):], forward_seconds=ACTIVATION_SHARE * seconds)
    release_memory(nbytes)
    spent["importance"] = timer.now() - t0
    if importance is None:  # best_start would measure them again, without a bound
        kinds = [k for k in kinds if k not in ("activation", "fisher")] or ["l1"]

    t0 = timer.now()
    if sizes is None:
        sens_cost = len(imodel.groups) * 6 * len(cal) * per_batch
        options = _size_options(imodel, target, metric, cal, example_inputs, min_ratio, loss, multiples,
                                importance, sens_cost, clock, skipped)
    else:
        options = {"given": dict(sizes)}
    spent["choose_sizes"] = timer.now() - t0
    t0 = timer.now()
    share = 0.5 if reconstruct and judge else 0.8
    first = refit_candidate.first_fit(cal, fit)
    need = (refit_candidate.RECONSTRUCT_PASSES * len(first) + len(judge)) * per_batch
    # the reconstruction's first fit is kept clear of the starts beyond the first one measured: where
    # both do not fit, the refit gains more (on SmolLM2 with 60 s the starts took the time it needed);
    # where the whole fit does not fit either, what is left after the first start goes to a partial one
    # (its deadline leaves the last layers as selected), as long as RECONSTRUCT_LEAST passes of it fit
    least = (refit_candidate.RECONSTRUCT_LEAST + 2 * len(judge)) * per_batch
    room = clock.left() - len(cal) * per_batch  # after the first start's measurement
    hold = min(need, room) if reconstruct and judge and least <= room else 0.0
    method, table, start = _sizes_and_starts(imodel, options, cal, reference, loss, kinds, importance, clock, share,
                                             per_batch, skipped, hold)
    if method == "given":
        table = {}
    release_memory(nbytes)
    spent["choose_start"] = timer.now() - t0
    chosen = imodel.sizes()
    mine, held = None, {}  # the chosen partitions' error on the held-out batches, every start's measured there
    if judge and len(start.errors) > 1 and HELD_OUT_STARTS * len(judge) * per_batch < clock.left():
        t0 = timer.now()
        start, held = held_out_start(imodel, start, judge, judged, loss, HELD_OUT_STARTS)
        mine = held[next(iter(start.kinds.values()))] if start.kinds else None
        spent["held_out_starts"] = timer.now() - t0

    recon, versus = None, {}
    if reconstruct and not judge:
        skipped.append("reconstruction (no held-out calibration batch to judge it on; pass 2 or more batches)")
    if reconstruct and judge and least > clock.left():  # not even a partial fit and the judging
        skipped.append(f"reconstruction on {len(first)} batches (about {need:.1f} s with its judging, "
                       f"{max(0.0, clock.left()):.1f} s left)")
    elif reconstruct and judge:
        t0 = timer.now()
        mine = distill_error(imodel, judge, judged, loss) if mine is None else mine
        def refit(scores: Mapping[str, Any], error: float, least: float = 0.0) -> tuple[Any, dict[str, float]]:
            return refit_candidate.reconstruct_candidate(imodel, chosen, cal, fit, judge, judged, error, loss, clock,
                                                         per_batch, skipped, scores, teacher, least)
        channels = refit_candidate.refit_channels(start, held, importance)
        recon, versus = refit(refit_candidate.kind_scores(channels, start, importance), mine, least)
        release_memory(nbytes)
        spent["reconstruct"] = timer.now() - t0
        if spare and recon is not None:  # time no tuning would use: other starts' channels, refit too
            recon = refit_candidate.runner_up(refit, clock, skipped, start, importance, held, recon, versus,
                                              spent["reconstruct"], kinds, channels)
            release_memory(nbytes)
            spent["reconstruct"] = timer.now() - t0
    if recon is None or REFINE_GAIN * versus["reconstruct"] >= versus["partitions"]:
        t0 = timer.now()
        trial = len(start.options) * len(cal) * per_batch  # one group's trials
        if clock.left() > trial:
            before = start
            start = refine_start(imodel, cal, start, reference=reference, max_seconds=clock.left(), loss=loss)
            if (recon is not None or mine is not None) and start.kinds != before.kinds:
                refined = distill_error(imodel, judge, judged, loss)
                if mine is not None and refined > mine:  # lower on the choice batches only, where the scores came from
                    start = before
                    for n, p in before.partitions.items():
                        imodel.set_partition(n, p)
                    skipped.append(f"the starts group by group ({refined:.4g} on held-out batches, "
                                   f"{mine:.4g} before)")
                else:
                    mine = refined
                if recon is not None:
                    versus["partitions"] = mine
                    if versus["reconstruct"] >= versus["partitions"]:
                        recon = None
        else:
            skipped.append("starts group by group (no time left)")
        spent["refine_start"] = timer.now() - t0
    versus.update({f"start {k}": e for k, e in held.items()})
    return Choices(chosen, method, table, start, recon, versus, spent, skipped, importance)
