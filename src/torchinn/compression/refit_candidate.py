"""The reconstruction candidate among :func:`torchinn.compress`'s choices.

L1 (or score) selection followed by a least-squares refit of the layers that read pruned channels
(:func:`torchinn.compression.baselines.reconstruct`), fitted on the training batches only and
judged against the partitions on held-out batches that no candidate was fitted or chosen on: first
fitted on the choice batches (a screening), refit on all the training batches when the screened
fit is close and the time left allows; fitted in part when its whole fit does not fit the time
(the layers its deadline does not reach keep their selected weights). Its channels are those of the
best start that selects by data (:func:`refit_channels`). Where no tuning follows and
the time allows, it is fitted again on the channels of the other starts, the held-out runner-up
first (:func:`runner_up`), and the one with the lower held-out error is kept.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from . import clock as timer
from ..model.integral_model import IntegralModel
from ..training.distill import Distillation
from .importance import Importance
from .starts import StartChoice, distill_error

__all__ = ["first_fit", "start_scores", "refit_channels", "kind_scores", "reconstruct_candidate", "runner_up"]

log = logging.getLogger(__name__)

#: the reconstruction is refit on all the training batches only when, fitted on the choice
#: batches, its held-out error is below this many times the partitions' (a screened fit is a
#: little worse than the full one)
SCREEN_MARGIN = 2.0
#: a reconstruction costs about this many forward passes per batch it is fitted on (the capture
#: through the full and the pruned network, then the solves); it is not tried when that would
#: not fit in the time left
RECONSTRUCT_PASSES = 4.0
#: ... but where this many forward passes of it fit (with the judging of both candidates), it is fitted
#: in part (its deadline leaves the layers it does not reach as selected): on a LM with a budget of
#: a few passes, a partial refit beats the channels as selected (benchmarks/RESULTS.md)
RECONSTRUCT_LEAST = 1.0
#: with time no tuning would use, the reconstruction is fitted again on another start's channels while
#: this many times the first fit's seconds are left (each kept when its held-out error is the lowest)
RUNNER_UP_MARGIN = 1.2


def first_fit(cal: Sequence[tuple], fit: Sequence[tuple]) -> Sequence[tuple]:
    """What the reconstruction is fitted on first: the choice batches (a screening) when the
    training batches are more than twice as many, else all of them."""
    return cal if len(fit) > 2 * len(cal) else fit


def _scores(importance: Importance | None) -> dict[str, dict[str, Any]]:
    """The scores of the starts that select by data, by start kind (empty without ``importance``)."""
    return {"activation": importance.activation, "fisher": importance.fisher} if importance else {}


def start_scores(start: StartChoice, importance: Importance | None) -> dict[str, Any]:
    """Per group whose chosen start selects by activation or Fisher scores, those scores."""
    found = _scores(importance)
    return {n: found[k][n] for n, k in start.kinds.items() if n in found.get(k, {})}


def refit_channels(start: StartChoice, held: Mapping[str, float], importance: Importance | None) -> str:
    """The start whose channels the reconstruction is fitted on first: of the starts that select by
    scores measured on data (activation, Fisher), the lowest on the held-out batches (then on the
    choice batches); the chosen start where none was measured. A start's partitions and its refit
    need not rank alike, and the channels the data chose refit better than those chosen by weight
    norm in 4 of the 5 calls where both were measured (the MNIST MLP at 25%, the MNIST CNN at 50%,
    EfficientNet-Lite0 at 25%, and a U-Net segmenter, where the uniform start beat the Fisher one
    on held-out batches, 0.128 against 0.134, and its refit, on L1 channels, was 5.6x worse than
    the refit on Fisher's, 0.049 against 0.0088; the MNIST MLP at 50% the exception, by 0.2%:
    benchmarks/RESULTS.md)."""
    found = _scores(importance)
    ranked = sorted(held, key=held.get) + [k for k in sorted(start.errors, key=start.errors.get) if k not in held]
    return next((k for k in ranked if found.get(k)), next(iter(start.kinds.values()), "l1"))


def kind_scores(kind: str, start: StartChoice, importance: Importance | None) -> dict[str, Any]:
    """:func:`start_scores` of ``start`` with every group at the start ``kind``."""
    return start_scores(dataclasses.replace(start, kinds={n: kind for n in start.kinds}), importance)


def reconstruct_candidate(imodel: IntegralModel, sizes: Mapping[str, int], cal: Sequence[tuple], fit: Sequence[tuple],
                 judge: Sequence[tuple], judged: Sequence[Any], mine: float, loss: Distillation, clock: Any,
                 per_batch: float, skipped: list[str], scores: Mapping[str, Any] | None = None,
                 teacher: Any = None, least: float = 0.0) -> tuple[nn.Module | None, dict[str, float]]:
    """The reconstruction baseline at ``sizes`` (fitted on ``fit``, never on ``judge``; channels
    selected by ``scores`` where given, else L1) when it beats ``mine`` (the partitions' error on
    ``judge``), and the errors measured on the way. The first fit starts when ``least`` seconds
    are left even if the whole of it would not fit (a partial fit: the layers its deadline does not
    reach keep their selected weights)."""
    from .baselines import reconstruct

    errors = {"partitions": mine}
    screens = [list(cal)] if first_fit(cal, fit) is cal else []
    recon = None
    fits: dict[str, Any] = {}
    for data in screens + [list(fit)]:
        guess = RECONSTRUCT_PASSES * len(data) * per_batch
        if recon is None and guess > clock.left() and (not least or least - len(judge) * per_batch > clock.left()):
            skipped.append(f"reconstruction on {len(data)} batches (about {guess:.1f} s, {clock.left():.1f} s left)")
            break
        t0 = timer.now()
        try:
            candidate = reconstruct(imodel, dict(sizes), data, scores=scores, teacher=teacher,
                                    max_seconds=max(0.0, clock.left() - len(judge) * per_batch)).eval()
            fits = candidate.refit_report
        except (RuntimeError, ValueError, NotImplementedError) as err:  # a candidate, not a requirement
            log.info("no reconstruction candidate (%s: %s)", type(err).__name__, err)
            skipped.append(f"reconstruction ({type(err).__name__}: {err})")
            break
        late = [n for n, r in fits.items() if str(r.get("skipped", "")).startswith("out of time")]
        if late:
            skipped.append(f"the refit of {len(late)} layers (out of time: they keep their selected weights)")
        theirs = distill_error(candidate, judge, judged, loss)
        recon = candidate
        if data is fit or len(data) == len(fit):
            errors["reconstruct"] = theirs
            break
        errors["reconstruct_screened"] = theirs
        if theirs > SCREEN_MARGIN * mine:
            log.info("reconstruction screened out: %.4g vs best partitions %.4g", theirs, mine)
            return None, errors
        spent = timer.now() - t0
        if spent * len(fit) / len(data) > clock.left():
            skipped.append(f"reconstruction on all {len(fit)} training batches (about "
                           f"{spent * len(fit) / len(data):.1f} s): the screened fit is the candidate")
            errors["reconstruct"] = theirs
            break
    if recon is None or errors.get("reconstruct", float("inf")) >= mine:
        return None, errors
    log.info("reconstruction %.4g vs best partitions %.4g on held-out calibration batches", errors["reconstruct"], mine)
    return recon, errors


def runner_up(refit: Callable[[Mapping[str, Any], float], tuple[nn.Module | None, dict[str, float]]],
              clock: Any, skipped: list[str], start: StartChoice, importance: Importance | None,
              held: Mapping[str, float], recon: nn.Module, versus: dict[str, float], took: float,
              kinds: Sequence[str] = ("l1", "activation", "fisher"), first: str | None = None) -> nn.Module:
    """``recon``, or the reconstruction on the channels of another start, where that fits in
    ``clock`` and has the lower held-out error: a start's partitions and its refit need not rank
    alike (waifu2x at 25%: the activation start beats the Fisher one on held-out batches, 1.45e-4
    against 1.48e-4, and its refit loses to Fisher's, 8.5e-5 against 7.2e-5; the MNIST MLP at 50%:
    the L1 start's partitions are 7x worse than the activation start's, its refit 0.2% better).
    The other channel sets are tried in turn while the time allows: the held-out runner-up start's,
    then L1's (which no data chose), then the remaining scores', of the start ``kinds`` allowed.
    While one is fitted, two candidates are held: one more copy of the compressed network's
    weights. ``refit(scores, error)``: :func:`reconstruct_candidate` on the channels of ``scores``,
    kept when below ``error``; ``first``: the start whose channels ``recon`` was fitted on
    (default: the chosen start's)."""
    def channels(kind: str) -> str:  # the starts other than these select their points by L1 norm
        return kind if kind in ("activation", "fisher") else "l1"
    chosen = channels(first or next(iter(start.kinds.values()), "l1"))
    scored = [k for k, found in _scores(importance).items() if found and k in kinds]
    order = ([channels(k) for k in sorted(held, key=held.get)] + ["l1"] * any(channels(k) == "l1" for k in kinds)
             + scored)
    others = [k for i, k in enumerate(order) if k != chosen and k not in order[:i]]
    first_error = versus["reconstruct"]
    for other in others:
        if clock.left() < RUNNER_UP_MARGIN * took:
            skipped.append(f"the reconstruction on the {other} start's channels (about {took:.1f} s, "
                           f"{max(0.0, clock.left()):.1f} s left)")
            break
        scores = kind_scores(other, start, importance)
        versus[f"reconstruct {chosen}"] = first_error
        best = min(versus["reconstruct"], versus["partitions"])
        said = len(skipped)
        second, errors = refit(scores, best)
        if "reconstruct" not in errors and "reconstruct_screened" not in errors:  # its own estimate did not fit
            del skipped[said:]
            skipped.append(f"the reconstruction on the {other} start's channels (its estimate, "
                           f"{clock.left():.1f} s left)")
            break
        if "reconstruct" in errors:
            versus[f"reconstruct {other}"] = errors["reconstruct"]
        if second is not None:
            log.info("reconstruction on the %s start's channels: %.4g against %.4g", other, errors["reconstruct"], best)
            versus["reconstruct"] = errors["reconstruct"]
            recon = second
    return recon
