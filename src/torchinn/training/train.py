"""Training integral models: randomized discretization and integration grid tuning.

**Randomized discretization** (the paper's Figure 1) works in any ordinary training loop: draw
new sizes for every group before each step with :class:`~torchinn.RandomSizes`::

    sizes = inn.RandomSizes(imodel, low=0.5, seed=0)       # same seed on every process
    for x, y in loader:
        sizes.step()
        loss = F.cross_entropy(imodel(x), y)
        opt.zero_grad(); loss.backward(); opt.step()

The **sandwich rule** (universally slimmable networks) learns more per epoch, at about
``2 + random`` times the cost of a step: each step runs the largest sizes, the smallest and
``random`` random sizes (on the labels; with ``distill=`` the smaller ones learn the largest one's
outputs, in-place distillation), and steps once on the summed gradients
(:func:`sandwich_backward`; under ``DistributedDataParallel`` each of its backward passes
all-reduces, ``2 + random`` times the communication of a step)::

    for x, y in loader:
        opt.zero_grad()
        inn.sandwich_backward(imodel, sizes, x, lambda out: F.cross_entropy(out, y))
        opt.step()
    sizes.full()

**Integration grid tuning** (post-training structured pruning, the blog's one minute): at the
chosen sizes, each group's partition becomes a :class:`~torchinn.maths.TrainablePartition` (the
seed's Listing 3), everything else is frozen (biases and norms may be allowed to move), and the
partitions are trained on a small calibration set, by default to reproduce the full-size
network's outputs (distillation: no labels needed). :func:`tune_grid` does it all;
``imodel.to_discrete()`` then gives the compressed network.

Under ``torch.distributed``, call :func:`make_grid_trainable` before wrapping the model in
``DistributedDataParallel``, then pass the wrapped model to :func:`tune_grid`.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from . import loop
from .distill import LOSS_CHOICES, distillation_loss, kl_distillation_loss, loss_kind
from ..model.inputs import as_inputs, batch_inputs, check_batches, run
from ..model.integral_model import IntegralModel
from .loop import split_validation
from ..options import check_choice, check_number
from ..maths.trainable import TrainablePartition

__all__ = ["TuneConfig", "make_grid_trainable", "tune_grid", "finetune", "distillation_loss", "batch_inputs",
           "sandwich_backward", "adam"]

log = logging.getLogger(__name__)

#: the teacher's outputs on a list of training batches are kept up to this many bytes
TEACHER_CACHE_BYTES = 1 << 30

LossFn = Callable[[Any, Any, Any], Tensor]


@dataclass
class TuneConfig:
    """How :func:`tune_grid` (and the tuning stages of :func:`torchinn.compress`) train.

    Args:
        steps: number of optimizer steps (``None``: until ``seconds``).
        seconds: wall-clock budget (``None``: until ``steps``); at least one must be set.
        lr: Adam learning rate of the partitions.
        lr_params: learning rate of the biases / norms when ``train`` allows them.
        train: what may move besides the partitions: ``"biases"``, ``"norms"`` (1-D tensors).
        decay_every, decay: multiply the learning rates by ``decay`` (in (0, 1]; 1: no decay)
            every ``decay_every`` steps (the paper: 0.33 every 300 of 1000 steps).
        progress: show a progress bar.
        holdout: share of a list of calibration batches held out to validate (at least one
            batch; a loader that is not a list is validated on its training loss). The best state
            on it is what tuning returns, so tuning never ends worse than it started there.
        eval_every: validate every this many steps.
        weights_share: :func:`torchinn.compress` only: the share of the budget spent, after grid
            tuning, distilling all the weights of the compressed network (0: grid tuning only,
            1: weights only). :func:`tune_grid` ignores it.
        lr_weights: Adam learning rate of that weight tuning.
        loss: distillation loss of :func:`torchinn.compress` (its choices and tuning):
            ``"mse"``, ``"mse-channels"`` (each output channel's squared error over the teacher's
            mean square there: outputs that mix scales, :mod:`torchinn.training.channels`), ``"kl"``
            (for class logits), or ``"auto"``: ``"kl"`` when every output looks like class logits
            (:func:`torchinn.training.distill.loss_kind`), at a temperature set from the teacher's
            confidence on the calibration data, else ``"mse-channels"`` when the channels' RMS spans
            more than 30x and those scales hold on both halves of the calibration batches (not
            pitch bins, loud where the data's pitches fall), else ``"mse"``
            (:func:`torchinn.training.distill.resolve_loss`).
        temperature: the temperature of ``"kl"`` (and of ``"auto"`` for class logits); ``None``
            (default): where the teacher's mean top probability on the calibration batches is
            0.9, or 1 when it is already below (:func:`torchinn.training.distill.fit_temperature`);
            ``1.0``: Hinton et al.'s loss at temperature 1. Not for ``loss="mse"``.
    """

    steps: int | None = None
    seconds: float | None = 60.0
    lr: float = 1e-3
    lr_params: float = 1e-4
    train: Sequence[str] = ()
    decay_every: int = 300
    decay: float = 0.33
    progress: bool = True
    holdout: float = 0.2
    eval_every: int = 10
    weights_share: float = 0.5
    lr_weights: float = 1e-4
    loss: str = "auto"
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("set steps, seconds, or both")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        if self.seconds is not None:
            check_number(self.seconds, "seconds", 0, low_open=True)
        for name in ("lr", "lr_params", "lr_weights"):
            check_number(getattr(self, name), name, 0, low_open=True)
        check_number(self.decay, "decay (the factor of the learning rates)", 0, 1, low_open=True)
        check_number(self.decay_every, "decay_every", 1, integer=True)
        self.train = tuple(self.train)
        bad = sorted(set(self.train) - {"biases", "norms"})
        if bad:
            raise ValueError(f"train may contain 'biases' and 'norms', got {bad}")
        check_number(self.holdout, "holdout (a share of the calibration batches)", 0, 1, high_open=True)
        check_number(self.weights_share, "weights_share (a share of the budget)", 0, 1)
        check_choice(self.loss, LOSS_CHOICES, "loss")
        if self.temperature is not None:
            check_number(self.temperature, "temperature", 0, low_open=True)
            if self.loss in ("mse", "mse-channels"):
                raise ValueError(f"temperature={self.temperature!r} applies to the 'kl' loss (and 'auto' on class "
                                 f"logits); loss={self.loss!r} compares the outputs directly: leave temperature None")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 1:
            raise ValueError(f"eval_every must be a positive int, got {self.eval_every!r}")


def adam(groups: list[dict]) -> torch.optim.Optimizer:
    """Adam with the fused update (one kernel over all tensors, the same update up to float
    rounding) where this torch has it for these tensors, the default one otherwise. An integral
    network trains its control values, more than the network at the size it runs has weights,
    so the optimizer's step weighs more than in the plain network: at 50% of every group of a
    ResNet-18 the fused update took the step from 2.17x to 1.76x the plain one (batch 32)."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups)


def _unwrap(model: nn.Module) -> IntegralModel:
    inner = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    if not isinstance(inner, IntegralModel):
        raise TypeError(f"expected an IntegralModel (from torchinn.convert), got {type(inner).__name__}")
    return inner


def make_grid_trainable(imodel: IntegralModel, groups: Iterable[str] | None = None) -> list[str]:
    """Give every group below its full size (or the named ``groups``) a trainable partition
    starting at its current points. Returns the names of the groups made trainable."""
    imodel = _unwrap(imodel)
    names = [imodel.groups[g].name for g in groups] if groups is not None else [
        n for n, g in imodel.groups.items() if g.size < g.max_size]
    like = next((t for t in imodel.parameters() if t.is_floating_point()), None)
    device, dtype = (like.device, like.dtype) if like is not None else (None, None)
    for name in names:
        p = imodel.partition(name)
        if isinstance(p, TrainablePartition):
            continue
        if p.quadrature.name == "gauss-legendre":
            raise ValueError(f"group {name!r} uses Gauss-Legendre nodes, which cannot be tuned; "
                             "convert with another quadrature")
        imodel.set_partition(name, TrainablePartition(p).to(device=device, dtype=dtype))
    return names


#: the loss functions of the two kinds, at temperature 1 (:class:`torchinn.training.distill.Distillation`
#: carries a temperature)
LOSSES: dict[str, LossFn] = {"mse": distillation_loss, "kl": kl_distillation_loss}


def sandwich_backward(model: nn.Module, sizes: Any, inputs: Any, loss_fn: Callable[[Any], Tensor], *,
                      random: int = 2, distill: str | None = None) -> list[float]:
    """One step of the sandwich rule: a forward and backward pass at each size of
    ``sizes.sandwich(random)`` (:meth:`~torchinn.RandomSizes.sandwich`: the largest, the smallest,
    ``random`` drawn), the gradients accumulated in ``.grad`` (zero them before, step the optimizer
    after). Every size learns ``loss_fn(output)`` (``distill=None``, the default); with
    ``distill`` (in-place distillation, as universally slimmable networks train) the sizes after
    the largest learn its outputs, detached: ``"kl"`` (class logits), ``"mse"``, or ``"auto"``
    (:func:`loss_kind`).

    ``inputs``: a tensor, a tuple of the model's positional arguments, a dict of keyword inputs
    or :class:`~torchinn.model.inputs.Inputs` (both). Returns the loss at each size, in order. The
    partitions keep the last sizes drawn.

    Distillation needs a good teacher: on the digits transformer trained for 15-30 epochs the
    labels did better by 6-13 points (benchmarks/RESULTS.md, issue 12), hence the default.
    """
    check_choice(distill, (None, "auto", "mse", "kl"), "distill")
    args = as_inputs(inputs, "inputs")
    losses: list[float] = []
    teacher: Any = None
    kind = "mse"
    for i, _ in enumerate(sizes.sandwich(random)):
        output = run(model, args)
        if i == 0 or distill is None:
            loss = loss_fn(output)
            if i == 0 and distill is not None:
                teacher = pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, output)
                kind = loss_kind(teacher) if distill == "auto" else distill
        else:
            loss = LOSSES[kind](output, None, teacher)
        loss.backward()
        losses.append(float(loss.detach()))
    return losses


def _frozen(imodel: IntegralModel, train: Sequence[str], freeze: bool = True) -> tuple[list[Tensor], list[Tensor]]:
    """Freeze everything (unless ``freeze=False``: a DistributedDataParallel wrapper expects a
    gradient for every parameter that required one when it was built, so the optimizer alone
    leaves the others unchanged); return (partition parameters, other parameters allowed to train)."""
    if freeze:
        for p in imodel.parameters():
            p.requires_grad_(False)
    grid = [p for part in imodel.partition_map().values() for p in part.parameters()]
    extra: list[Tensor] = []
    for key, fn in imodel.functions.items():
        name = key.replace("/", ".")
        is_bias = name.endswith("bias")
        is_norm = not is_bias and len(fn.shape) == 1
        if ("biases" in train and is_bias) or ("norms" in train and is_norm):
            extra.extend(fn.parameters())
    for name, t in imodel.fixed.named_parameters():
        is_bias = name.endswith("bias")
        if ("biases" in train and is_bias) or ("norms" in train and not is_bias and t.ndim == 1):
            extra.append(t)
    if not freeze and not all(p.requires_grad for p in grid + extra):
        raise ValueError("a parameter to tune does not require grad, so DistributedDataParallel does not "
                         "synchronise it: leave it trainable before wrapping the model")
    for p in grid + extra:
        p.requires_grad_(True)
    return grid, extra


def tune_grid(model: nn.Module, calibration: Iterable[Any], *, teacher: nn.Module | None = None,
              loss_fn: LossFn | None = None, tune: TuneConfig | None = None,
              validation: Sequence[Any] | None = None) -> dict[str, Any]:
    """Tune the integration grids of ``model`` (an :class:`IntegralModel`, possibly wrapped in
    ``DistributedDataParallel``) at its current sizes, in place.

    ``calibration`` yields batches (a tensor of inputs, or ``(inputs, labels)``); a list or a
    DataLoader is cycled until the step or time budget is spent, a one-shot iterator (a
    generator) is used until it ends. ``loss_fn(output, batch, teacher_output)`` defaults to
    :func:`distillation_loss` against ``teacher`` (default: the model at full size, frozen).
    The state returned is the best one on ``validation`` (default: the last
    ``tune.holdout`` of a list of batches), so it is never worse there than the start.
    Returns a report: steps, seconds, first and last loss, validation errors at the start and
    returned (``start_error``, ``best_error``), skipped non-finite steps, learning-rate cuts.
    """
    tune = tune or TuneConfig()
    imodel = _unwrap(model)
    if not imodel.group_names:
        raise ValueError("the model has no channel groups to tune")
    if not any(isinstance(p, TrainablePartition) for p in imodel.partition_map().values()):
        if model is not imodel:
            raise ValueError("call make_grid_trainable(model) before wrapping it in DistributedDataParallel")
        if not make_grid_trainable(imodel):
            log.warning("every group is at its full size: nothing to tune")
            return {"steps": 0, "seconds": 0.0, "first_loss": None, "last_loss": None}
    loss_fn = loss_fn or distillation_loss
    if teacher is None:
        teacher = copy.deepcopy(imodel)
        for name, p in imodel.full_partitions().items():
            teacher.set_partition(name, p)
    teacher.eval()
    saved = {id(p): p.requires_grad for p in imodel.parameters()}
    wrapped = model is not imodel
    grid, extra = _frozen(imodel, tune.train, freeze=not wrapped)
    tuned = {id(p) for p in grid + extra}
    groups = [{"params": grid, "lr": tune.lr}]
    if extra:
        groups.append({"params": extra, "lr": tune.lr_params})
    was_training = model.training
    model.eval()  # the network as it will be used: no dropout; gradients still flow
    try:
        return _fit(model, imodel, groups, calibration, teacher, loss_fn, tune, validation, "tuning grids",
                    functools.partial(check_batches, imodel))
    finally:
        model.train(was_training)
        for p in imodel.parameters():
            p.requires_grad_(saved.get(id(p), True))
            if wrapped and id(p) not in tuned:
                p.grad = None  # computed for DistributedDataParallel, not used


def finetune(model: nn.Module, calibration: Iterable[Any], *, teacher: nn.Module,
             loss_fn: LossFn | None = None, tune: TuneConfig | None = None,
             validation: Sequence[Any] | None = None) -> dict[str, Any]:
    """Distil every floating-point parameter of a plain network (``model``, e.g. from
    ``to_discrete()`` or a pruning baseline) towards ``teacher``, in place, with Adam at
    ``tune.lr_weights`` for ``tune``'s budget; the same loop, validation and guarantees as
    :func:`tune_grid`: the returned weights are the best on the validation batches, a step with
    a non-finite loss is skipped and counted. ``model`` and ``teacher`` get their training
    flags back, and ``model`` its ``requires_grad`` flags. Returns the same report. The
    teacher is frozen: its outputs on a list of batches are computed once (up to
    ``TEACHER_CACHE_BYTES``), so change the batches by making new ones, not in place."""
    tune = tune or TuneConfig()
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params:
        raise ValueError(f"{type(model).__name__} has no floating-point parameters to fine-tune")
    saved = {id(p): p.requires_grad for p in model.parameters()}
    for p in params:
        p.requires_grad_(True)
    was_training, teacher_training = model.training, teacher.training
    model.eval()
    teacher.eval()
    try:
        return _fit(model, model, [{"params": params, "lr": tune.lr_weights}], calibration, teacher,
                    loss_fn or distillation_loss, tune, validation, "tuning weights")
    finally:
        model.train(was_training)
        teacher.train(teacher_training)
        for p in model.parameters():
            p.requires_grad_(saved.get(id(p), True))
            p.grad = None


def _fit(model: nn.Module, inner: nn.Module, groups: list[dict], loader: Iterable[Any], teacher: nn.Module,
         loss_fn: LossFn, config: TuneConfig, validation: Sequence[Any] | None, desc: str,
         check: Callable[[list[tuple], str, int], None] | None = None) -> dict[str, Any]:
    """The loop of both stages; ``check`` refuses batches before they run (:mod:`torchinn.model.inputs`)."""
    train_batches, held_out = (loader, list(validation)) if validation is not None else \
        split_validation(loader, config.holdout)
    listed = isinstance(train_batches, Sequence)
    if check is not None:
        check([batch_inputs(b) for b in held_out or []], "validation batch", 0)
        if listed:
            check([batch_inputs(b) for b in train_batches], "calibration batch", 0)
    drawn = [0]
    if held_out is None and isinstance(loader, Sequence) and len(loader) == 1:
        held_out = list(loader)  # one batch: validate on it
    if isinstance(train_batches, Sequence) and len(train_batches) == 0:
        raise ValueError("the calibration loader is empty")
    validate: Callable[[], float] | None = None
    t_targets = time.perf_counter()  # the teacher's passes below count in config.seconds (an unseen U-Net's
    if held_out:                     # 13 held-out batches took 5 s: 63.7 s of a 60 s compress)
        with torch.no_grad():
            targets = [run(teacher, batch_inputs(b)) for b in held_out]

        def validate_held_out() -> float:
            with torch.no_grad():
                return sum(float(loss_fn(run(inner, batch_inputs(b)), b, t)) for b, t in zip(held_out, targets)) / len(held_out)

        validate = validate_held_out

    # a list of batches is cycled: the teacher's outputs on it are computed once (a quarter of a
    # step's time), up to TEACHER_CACHE_BYTES; a loader makes new batches, so it is not cached
    cache: dict[int, Any] | None = {} if isinstance(train_batches, Sequence) else None
    room = [TEACHER_CACHE_BYTES]

    def step_loss(batch: Any) -> Tensor:
        inputs = batch_inputs(batch)
        if check is not None and not listed:  # a loader: each batch as it comes
            check([inputs], "calibration batch", drawn[0])
            drawn[0] += 1
        target = cache.get(id(batch)) if cache is not None else None
        if target is None:
            with torch.no_grad():
                target = run(teacher, inputs)
            size = sum(t.numel() * t.element_size() for t in pytree.tree_leaves(target) if isinstance(t, Tensor))
            if cache is not None and size <= room[0]:
                cache[id(batch)] = target
                room[0] -= size
        return loss_fn(run(model, inputs), batch, target)

    params = [p for g in groups for p in g["params"]]
    optimizer = adam(groups)
    seconds = None if config.seconds is None else max(0.0, config.seconds - (time.perf_counter() - t_targets))
    return loop.run(params, optimizer, loop.Batches(train_batches), step_loss, validate,
                    loop.LoopConfig(config.steps, seconds, config.eval_every, config.decay_every,
                                    config.decay, config.progress, desc))
