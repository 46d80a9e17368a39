"""Train one network for every size: :func:`torchinn.make_elastic`.

The recipe, and why (measured on mnist_cnn and waifu2x_photo, benchmarks/elastic.py and
docs/decisions/elastic.md):

* **Ranked, nested partitions** (``ranking``): each group's channels are ranked once by importance
  on the calibration data (L1 norm, activation or Fisher scores of
  :mod:`torchinn.compression.importance`; ``"auto"`` keeps the one whose top channels give the
  lowest calibration error at ``low`` and at the middle size), and ``k`` channels are the top
  ``k`` (:class:`~torchinn.elastic.network.ElasticNetwork`). Uniform resampling of a converted
  network's continuous weights (``ranking="uniform"``, the paper's random discretization) starts
  far worse below full size, since the weights of a network trained discrete are not smooth along
  its channels, and the shared weights cannot fix every size at once: the issue measured 4.9 /
  16.8 dB at 25 / 50% on waifu2x where the ranked start alone keeps most of the quality.
* **The sandwich rule with the full size in every step** (:func:`torchinn.sandwich_backward`,
  ``random`` draws between ``low`` and full per group, each group its own size): the full size
  learns its teacher at every step, which holds it where it was.
* **Distillation from the original network** (no labels needed): the loss of
  :func:`torchinn.training.distill.resolve_loss` (``"auto"``: KL at a fitted temperature for class
  logits, else squared error) between each size and the original's outputs.
* **A small learning rate** (Adam, ``lr=1e-5``, constant: a cosine decay to 0 ended further from
  the full-size tolerance on waifu2x): at 1e-4 the issue's full network lost 13 dB.
* **The full size is guarded**: every ``eval_every`` steps the full-size error on held-out
  calibration batches is measured; the state returned is the one with the lowest mean held-out
  error over the report's sizes among those whose full-size error is within ``full_tolerance``
  (the start always is: converting is exact).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..compression.importance import Importance, channel_importance, measure_importance
from ..model.convert import ConvertConfig, convert
from ..model.inputs import as_inputs, batch_inputs, check_batches, padding_mask, run
from ..model.integral_model import IntegralModel
from ..training.distill import Distillation, resolve_loss
from ..training.train import adam, sandwich_backward
from .arguments import RANKINGS, check_arguments
from .biases import fit_biases
from .budget import REFIT_ALONE, REFIT_SHARE, Budget
from .choose import choose_deployed_sizes
from .measure import _FULL_METRIC, _errors, _FullWeight, _own, _score, _state, _total
from .network import ElasticNetwork
from .refit import deployed_bytes, refit_deployed
from .report import ElasticReport
from .sizes import DeployedSizes, NestedSizes

__all__ = ["RANKINGS", "make_elastic"]

log = logging.getLogger(__name__)


def _ratios(low: float) -> list[float]:
    return sorted({low, *(r for r in (0.25, 0.5, 0.75) if r > low), 1.0})


def _rankings(imodel: IntegralModel, kinds: Sequence[str], batches: list, reference: list,
              loss: Distillation, keep: list | None = None) -> dict[str, dict[str, Tensor]]:
    """Per kind of ranking, group -> channel indices, most important first (``keep``: a list the
    measured :class:`~torchinn.compression.importance.Importance` is appended to)."""
    scores = {"l1": channel_importance(imodel)}
    if "activation" in kinds or "fisher" in kinds:
        try:
            imp = measure_importance(imodel, batches, loss, reference, fisher="fisher" in kinds)
            if keep is not None:
                keep.append(imp)
            scores["activation"] = {g: imp.activation.get(g, s) for g, s in scores["l1"].items()}
            if imp.fisher:
                scores["fisher"] = {g: imp.fisher.get(g, s) for g, s in scores["l1"].items()}
        except Exception as err:  # noqa: BLE001 - optional candidates: the L1 ranking still stands
            log.info("make_elastic: no activation or Fisher ranking (%s: %s)", type(err).__name__, err)
    return {k: {g: torch.argsort(s, descending=True, stable=True) for g, s in scores[k].items()}
            for k in kinds if k in scores}


def _fisher(imodel: IntegralModel, batches: list, reference: list, loss: Distillation) -> Importance | None:
    """Fisher scores for the deployed sizes' choice, where the ranking did not measure them."""
    try:
        return measure_importance(imodel, batches, loss, reference, fisher=True)
    except Exception as err:  # noqa: BLE001 - optional: the curves' sizes still stand
        log.info("make_elastic: no Fisher scores for the deployed sizes (%s: %s)", type(err).__name__, err)
        return None


def _batches(calibration: Iterable[Any], imodel: IntegralModel, holdout: float) -> tuple[list, list]:
    if isinstance(calibration, (Tensor, str, bytes)) or not isinstance(calibration, Iterable):
        raise TypeError(f"calibration must be a list (or iterable) of batches: tensors, (inputs, labels) pairs or "
                        f"dicts of keyword inputs; got {type(calibration).__name__}")
    batches = [batch_inputs(b) for b in calibration]
    if not batches:
        raise ValueError("calibration gave no batch: make_elastic needs at least 2 (training and held-out)")
    check_batches(imodel, batches)
    if len(batches) < 2:
        raise ValueError("make_elastic needs at least 2 calibration batches: some to train on, at least one held out "
                         f"to measure the sizes and guard the full size; got {len(batches)}")
    n = min(len(batches) - 1, max(1, round(holdout * len(batches))))
    return batches[:-n], batches[-n:]


def _outputs(teacher: nn.Module, batches: list) -> list:
    with torch.no_grad():
        return [run(teacher, b) for b in batches]


def make_elastic(model: nn.Module | IntegralModel, example_inputs: Any, calibration: Iterable[Any], *,
                 low: float = 0.25, seconds: float | None = None, steps: int | None = None, lr: float | None = None,
                 full_tolerance: float | None = None, random: int = 2, ranking: str = "auto", loss: str | Distillation = "auto",
                 holdout: float = 0.2, eval_every: int = 20, seed: int = 0,
                 config: ConvertConfig | None = None, deploy: Sequence[float] | None = None,
                 deploy_kind: str = "scales", partition_lr: float | None = None, bias_lr: float = 1e-3,
                 fit_scales: bool = False, tune_share: float = 0.0,
                 offset_lr: float = 1e-4, deploy_sizes: str = "curves",
                 refit_share: float = REFIT_SHARE) -> tuple[ElasticNetwork, ElasticReport]:
    """Turn a pretrained ``model`` (or an :class:`~torchinn.IntegralModel`, copied) into one
    :class:`~torchinn.elastic.network.ElasticNetwork` that works at every size from ``low`` of each
    group's channels to full, trained for ``seconds`` (the whole call after the conversion: the
    rankings, the training, the refits, the tuning and the final measurements, each stage checking
    the clock before work it cannot finish, :mod:`torchinn.elastic.budget`; ``report.seconds`` is
    the whole call, ``report.stages`` the split, ``report.skipped`` what did not fit) and/or
    ``steps`` on ``calibration`` (a
    list of at least 2 batches: tensors, ``(inputs, labels)`` pairs, whose labels are not used,
    or dicts of keyword inputs; the last ``holdout`` share is held out). Returns the network (at
    full size) and an :class:`ElasticReport`. The recipe and its defaults: the module notes.

    ``full_tolerance``: how far from the original, on the held-out batches, the full-size network
    of a returned state may be: for class logits (``loss`` resolved to KL), the share of samples
    whose top class differs (default 0.001: 0.1 point of agreement); otherwise the relative
    squared error (default 1e-5, about 0.05 dB of PSNR on a network at 35 dB). ``model`` is never
    modified.

    ``lr``: the shared weights' learning rate (default 1e-5; 0 with deployed scales).

    ``deploy``: fractions of the parameters (each in (0, 1)) that get their own sizes and their
    own trained state (:meth:`ElasticNetwork.deploy`, sizes from curves measured before training):
    ``deploy_kind="scales"`` (default), a scale per kept channel on the ranked top-``k`` points;
    ``"partitions"``, trained points; ``"scales-bias"``, the scales and a per-size correction of
    the bias of every layer reading a resized group, started by a closed form on the training
    batches (:func:`torchinn.elastic.biases.fit_biases`) and trained at ``bias_lr`` (0: kept at
    the closed form; ``fit_scales=True``: the scales start at a per-channel least-squares fit, not
    1); ``"scales-refit"``, the same, then after training the layers reading resized groups refit
    by least squares per size, kept as per-size offsets where they lower the size's held-out error
    (:func:`torchinn.elastic.refit.refit_deployed`: a copy of those layers' weights per size,
    ``report.deployed_bytes``), in the last 0.4 of the budget (each size on fewer batches, or none,
    where its share does not fit: ``report.skipped``); with ``tune_share`` > 0, the refit comes after
    ``1 - tune_share`` of the budget, taking at most ``refit_share`` of what is left (default 0.9:
    :mod:`torchinn.elastic.budget`), and the rest trains each size's scales,
    bias corrections and refit weights (at ``offset_lr``) by distillation, each size keeping its
    best held-out state (``report.refit[t]["error_tuned"]``). ``deploy_sizes``: how each deployed
    fraction's sizes are chosen, ``"curves"`` (default: shared by the error curves, as
    ``resize(target=t)``) or ``"best"`` (those or the Fisher greedy sizes, whichever has the lower
    held-out error at the ranked top-``k``: :func:`torchinn.elastic.choose.choose_deployed_sizes`;
    ``report.deployed_sizes``). Each step then trains the full size and ``random`` (at least one) of them in turn, their
    state at ``partition_lr`` (default 1e-2 for scales, 1e-3 for partitions) and the shared weights
    at ``lr`` (``0``: the shared weights stay the converted ones, so the full size is exact), and
    the guard scores those sizes. Other sizes keep the ranked top-``k`` partitions. ``lr=0`` needs
    ``deploy``.

    >>> import torch, torchinn as inn
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    >>> data = [torch.randn(16, 8) for _ in range(4)]
    >>> elastic, report = inn.make_elastic(net, data[0], data, steps=3, ranking="l1")
    >>> report.steps, report.full_error_after <= report.full_tolerance
    (3, True)
    >>> elastic.resize(0.5)
    {'0.weight:0': 16}
    """
    lr, partition_lr = check_arguments(
        low=low, seconds=seconds, steps=steps, lr=lr, full_tolerance=full_tolerance, random=random, ranking=ranking,
        loss=loss, holdout=holdout, eval_every=eval_every, deploy=deploy, deploy_kind=deploy_kind,
        partition_lr=partition_lr, bias_lr=bias_lr, fit_scales=fit_scales, tune_share=tune_share, offset_lr=offset_lr,
        deploy_sizes=deploy_sizes, refit_share=refit_share)
    t0 = time.perf_counter()
    if isinstance(model, IntegralModel):
        imodel = copy.deepcopy(model)
        imodel.resize({n: g.max_size for n, g in imodel.groups.items() if g.partition.resizable})
    elif isinstance(model, nn.Module):
        imodel = convert(model, as_inputs(example_inputs), config)
    else:
        raise TypeError(f"make_elastic needs an nn.Module or an IntegralModel, got {type(model).__name__}")
    budget = Budget(seconds)  # the conversion is not counted
    budget.stages["convert"] = budget.start - t0
    train, held = _batches(calibration, imodel, holdout)
    teacher = imodel.to_discrete(graph=True).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ref_train, ref_held = _outputs(teacher, train), _outputs(teacher, held)
    dist = resolve_loss(loss, ref_train, masks=[padding_mask(b) for b in train])

    kinds = ("l1", "activation", "fisher") if ranking == "auto" else (ranking,)
    measured: list = []
    orders = {} if ranking == "uniform" else _rankings(imodel, kinds, train[:4], ref_train[:4], dist, measured)
    ranking_errors = {}
    if len(orders) > 1:  # the ranking whose top channels do best on the training batches
        choice = _ratios(low)[:1] + [0.5 * (low + 1.0)]
        for k, o in orders.items():
            errs, _ = _errors(ElasticNetwork(imodel, o), choice, train[:4], ref_train[:4], dist)
            ranking_errors[k] = math.exp(_score(errs))
        kind = min(ranking_errors, key=lambda k: ranking_errors[k])
    else:
        kind = kinds[0] if orders or ranking == "uniform" else "l1"
    elastic = ElasticNetwork(imodel, orders.get(kind, {}))
    elastic.low = float(low)
    ratios = _ratios(low)
    t_check = time.perf_counter()
    before, full_before = _errors(elastic, ratios, held, ref_held, dist)
    t_check = time.perf_counter() - t_check  # the final measurements repeat these passes: kept aside
    # the final curves, where the shared weights train: a pass per group and ratio on 4 batches
    t_curves = t_check / ((len(ratios) + 1) * len(held)) * 4 * 4 * len(elastic.curves or imodel.groups)
    if full_tolerance is None:
        full_tolerance = 1e-3 if dist.kind == "kl" else 1e-5
    guarded, dep_before, size_choice = before, {}, {}
    if deploy is not None:
        t_curves = time.perf_counter()
        elastic.measure_curves(train[:4], ref_train[:4], dist)
        t_curves = time.perf_counter() - t_curves
        chosen = None
        if deploy_sizes == "best" and orders:
            imp = measured[0] if measured and measured[0].fisher else _fisher(imodel, train[:4], ref_train[:4], dist)
            chosen, size_choice = choose_deployed_sizes(elastic, list(deploy), imp, held, ref_held, dist)
        elastic.deploy(list(deploy), deploy_kind, sizes=chosen)
        if deploy_kind in ("scales-bias", "scales-refit"):
            fit_biases(elastic, train, teacher, scales=fit_scales)
        t_dep = time.perf_counter()
        dep_before, _ = _errors(elastic, sorted(elastic.deployed), held, ref_held, dist, deployed=True)
        t_check += time.perf_counter() - t_dep
        guarded = dep_before
    budget.reserve = t_check + (t_curves if lr > 0 else 0.0)  # frozen shared weights: the curves stand
    budget.stage("setup")

    params = [p for n, p in imodel.named_parameters() if not n.startswith(("partitions.", "offsets.")) and p.requires_grad]
    if lr == 0:
        for p in params:
            p.requires_grad_(False)

    def optimizer(weights: Sequence[Tensor] = ()) -> torch.optim.Optimizer:
        """Adam over the shared weights (``lr`` > 0), the deployed sizes' partitions, their bias
        corrections and their refit ``weights`` (offsets), each at its learning rate."""
        biases = {id(b) for d in elastic.deployed.values() for b in d.biases.values()}
        w = {id(q) for q in weights}
        kind = [(lambda q: id(q) not in biases, partition_lr), (lambda q: id(q) in biases and id(q) not in w, bias_lr),
                (lambda q: id(q) in w, offset_lr)]
        extra = elastic.deployed_parameters()
        groups = ([{"params": params, "lr": lr}] if lr > 0 else []) + [
            {"params": [q for q in extra if pick(q)], "lr": rate} for pick, rate in kind]
        return adam([g for g in groups if g["params"]])

    sizes: NestedSizes | DeployedSizes = DeployedSizes(elastic, seed, full=lr > 0) if deploy is not None \
        else NestedSizes(elastic, low, seed)
    best_score = _score(guarded) if deploy is None else _total(guarded)
    extra = elastic.deployed_parameters()
    best, kept, done = _state(imodel, extra), 0, 0
    # frozen shared weights (lr=0): the deployed sizes are independent, each keeps its own best check
    own = {t: (e, [q.detach().clone() for q in _own(elastic, t)]) for t, (_, e) in guarded.items()} \
        if deploy is not None and lr == 0 else {}
    t_train = time.perf_counter()

    def over(until: float, end: float, need: float) -> bool:
        """Whether the phase is done: ``until`` of the steps taken, or no time for ``need`` more
        seconds before ``end`` (a ``time.perf_counter()`` value)."""
        return (steps is not None and done >= until * steps) or time.perf_counter() + need > end

    weight = _FullWeight(dist)
    if lr == 0:  # no full-size pass: every pass is a deployed size, weighted alike
        weight.weight = 1.0
    history: list[tuple[int, float, float, float]] = []

    def phase(opt: torch.optim.Optimizer, until: float, end: float) -> None:
        """Train until ``until`` of the steps are taken or the clock reaches ``end``, keeping the
        best checked state(s): a step starts only if it and a check fit before ``end``."""
        nonlocal done, best_score, best, kept
        imodel.train()
        step_s = check_s = 0.0  # the last step's and check's seconds
        while not over(until, end, step_s + check_s):
            for inputs, ref in zip(train, ref_train):
                t_step = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                weight.start(inputs, ref)
                sandwich_backward(imodel, sizes, inputs, weight, random=random)
                opt.step()
                done += 1
                step_s = time.perf_counter() - t_step
                last = over(until, end, step_s + check_s)
                if done % eval_every == 0 or last:
                    t_eval = time.perf_counter()
                    now, full = _errors(elastic, ratios, held, ref_held, dist)
                    if deploy is not None:
                        now, _ = _errors(elastic, sorted(elastic.deployed), held, ref_held, dist, deployed=True)
                    imodel.train()
                    score = _score(now) if deploy is None else _total(now)
                    history.append((done, time.perf_counter() - t_train, full, math.exp(score) if deploy is None else score))
                    if full <= full_tolerance and score < best_score:
                        best_score, best, kept = score, _state(imodel, extra), done
                    for t, (e, _) in list(own.items()):
                        if now[t][1] < e:
                            own[t], kept = (now[t][1], [q.detach().clone() for q in _own(elastic, t)]), done
                    if lr > 0:
                        weight.update(full, full_tolerance)
                    check_s = time.perf_counter() - t_eval
                if last:
                    break

    def restore() -> None:
        """Back to full size, at the best checked state (and each deployed size's own best)."""
        imodel.clear_samples()  # the samples kept for the deployed scales' steps (memory)
        sizes.full()
        imodel.load_state_dict(best[0], strict=False)
        with torch.no_grad():
            for t, b in zip(extra, best[1]):
                t.copy_(b)
            for t, (_, kept_own) in own.items():
                for q, b in zip(_own(elastic, t), kept_own):
                    q.copy_(b)
        imodel.eval()

    refitting = bool(deploy) and deploy_kind == "scales-refit"
    first = (1.0 - (tune_share if tune_share > 0 else REFIT_ALONE)) if refitting else 1.0
    phase(optimizer(), 1.0 - tune_share, budget.end() if seconds is None else time.perf_counter() + first * budget.left())
    train_seconds = time.perf_counter() - t_train
    restore()
    budget.stage("train")
    refits = {}
    if refitting:  # at most refit_share of what is left (all of it when no tuning follows)
        refits = refit_deployed(elastic, train, teacher, lambda t: _errors(
            elastic, [t], held, ref_held, dist, deployed=True)[0][t][1],
            seconds=None if seconds is None else budget.left() * (refit_share if tune_share > 0 else 1.0))
        budget.stage("refit")
        budget.skipped += [f"refit at {t:.0%}: {r['why']}" for t, r in refits.items() if r.get("short")]
    if tune_share > 0:  # the rest of the budget: each size's scales, corrections and refit weights
        weights = [b for d in elastic.deployed.values() for b in d.biases.values() if not b.requires_grad]
        for b in weights:
            b.requires_grad_(True)
        now, _ = _errors(elastic, sorted(elastic.deployed), held, ref_held, dist, deployed=True)
        extra = elastic.deployed_parameters()
        best_score, best = _total(now), _state(imodel, extra)
        own = {t: (e, [q.detach().clone() for q in _own(elastic, t)]) for t, (_, e) in now.items()} if lr == 0 else {}
        phase(optimizer(weights), 1.0, budget.end())
        train_seconds = time.perf_counter() - t_train
        restore()
        budget.stage("tune")
        for t, r in refits.items():
            r["error_tuned"] = own[t][0] if t in own else None
    if lr == 0:
        for p in params:
            p.requires_grad_(True)
    if lr > 0 or not elastic.curves:  # frozen shared weights: the curves measured before stand
        elastic.measure_curves(train[:4], ref_train[:4], dist)
    after, full_after = _errors(elastic, ratios, held, ref_held, dist)
    dep_after = _errors(elastic, sorted(elastic.deployed), held, ref_held, dist, deployed=True)[0] if deploy else {}
    note = "" if kept == done else (
        f"kept the state of step {kept} of {done}: later ones had a higher held-out error over the sizes"
        f" or a full-size error above full_tolerance={full_tolerance:g}")
    report = ElasticReport(steps=done, seconds=time.perf_counter() - t0, train_seconds=train_seconds, loss=str(dist), ranking=kind, low=low, lr=lr,
                           full_tolerance=full_tolerance, full_error_before=full_before,
                           full_error_after=full_after, full_metric=_FULL_METRIC[dist.kind], kept_step=kept,
                           quality={r: (before[r][0], before[r][1], after[r][1]) for r in ratios},
                           ranking_errors=ranking_errors, history=history, held_out_batches=len(held), note=note,
                           deployed={t: (dep_before[t][0], dep_before[t][1], dep_after[t][1]) for t in dep_after},
                           deploy_kind=deploy_kind if deploy else "", refit=refits,
                           deployed_bytes={t: deployed_bytes(d) for t, d in elastic.deployed.items()},
                           deployed_sizes=size_choice, stages=budget.stages, skipped=budget.skipped)
    budget.stage("final")
    report.seconds = time.perf_counter() - t0
    return elastic, report
