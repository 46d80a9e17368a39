"""Baselines on the same groups and sizes: L1-norm and random channel selection, selection
followed by a least-squares reconstruction, and a fine-tuning loop for any of them.

Every comparison in torchinn is INN versus plain structured pruning at *equal sizes* (hence equal
parameter counts and FLOPs): the baselines keep ``size`` of each group's original channels and
drop the rest, in every tensor of the group, with no interpolation and no rescaling.

* ``"l1"``: Li et al., *Pruning Filters for Efficient ConvNets* (2016), the channel selection the
  paper compares against: keep the channels whose producing filters have the largest L1 norm
  (summed over every tensor that produces the group, e.g. all the convolutions adding into a
  residual stream);
* ``"random"``: a uniformly random subset (seeded);
* ``"reconstruct"``: ThiNet (Luo et al., 2017) / channel pruning (He et al., 2017): L1 selection,
  then every layer that consumes pruned channels is refit by least squares on calibration
  activations to reproduce the original network's output at that layer (:func:`reconstruct`).

:func:`finetune` trains all the weights of any of them against the original network for a time or
step budget (the "same seconds of fine-tuning" every method gets in a comparison).

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> imodel = inn.convert(net, (torch.randn(2, 8),))
>>> pruned = prune(imodel, {"0.weight:0": 8}, "l1")
>>> pruned.get_parameter("0.weight").shape, pruned.get_parameter("2.weight").shape
(torch.Size([8, 8]), torch.Size([4, 8]))
>>> calibration = [torch.randn(64, 8) for _ in range(4)]
>>> refit = prune(imodel, {"0.weight:0": 8}, "reconstruct", calibration=calibration)
>>> refit.get_parameter("2.weight").shape  # same shapes, the consumer refit by least squares
torch.Size([4, 8])
>>> report = finetune(refit, net, calibration, steps=10)
>>> report["steps"]
10
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, fx, nn
from tqdm.auto import tqdm

from .integral_model import IntegralModel
from .refit import refit_consumers
from .structured import plan_size, take_channels
from .train import batch_inputs, distillation_loss

__all__ = ["channel_importance", "select_channels", "prune", "reconstruct", "finetune"]

log = logging.getLogger(__name__)

Method = Literal["l1", "random", "reconstruct"]


def channel_importance(imodel: IntegralModel) -> dict[str, Tensor]:
    """Per group, the L1 norm of each channel over the tensors that *produce* it (dimensions not
    summed over: filters and biases, not the next layer's input slices), at full size."""
    tensors = imodel.tensors(imodel.full_partitions())
    plans = imodel.plans()
    scores = {g: torch.zeros(imodel.groups[g].max_size, dtype=torch.float64) for g in imodel.group_names}
    for name, plan in plans.items():
        t = tensors[name].detach().double().cpu()
        for d, dim_plan in enumerate(plan):
            start = 0
            for seg in dim_plan:
                length = 1
                for a in seg:
                    length *= a.size
                block = t.narrow(d, start, length)
                block = block.reshape(list(t.shape[:d]) + [a.size for a in seg] + list(t.shape[d + 1:]))
                for k, a in enumerate(seg):
                    if a.group is None or a.integrate:
                        continue
                    axis = d + k
                    dims = [i for i in range(block.ndim) if i != axis]
                    scores[a.group] += block.abs().sum(dim=dims) if dims else block.abs()
                start += length
    return scores


def select_channels(imodel: IntegralModel, sizes: Mapping[str, int], method: Method = "l1",
                    seed: int = 0) -> dict[str, Tensor]:
    """Sorted indices of the channels each group keeps (groups not in ``sizes`` keep all)."""
    if method not in ("l1", "random"):
        raise ValueError(f"method must be 'l1' or 'random', got {method!r}")
    groups = imodel.groups
    gen = torch.Generator().manual_seed(seed)
    scores = channel_importance(imodel) if method == "l1" else None
    out = {}
    for name, size in sizes.items():
        g = groups[name]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= g.max_size:
            raise ValueError(f"group {g.name!r} has {g.max_size} channels; size must be in "
                             f"[1, {g.max_size}], got {size!r}")
        if method == "l1":
            keep = torch.topk(scores[g.name], size).indices
        else:
            keep = torch.randperm(g.max_size, generator=gen)[:size]
        out[g.name] = torch.sort(keep).values
    return out


def prune(imodel: IntegralModel, sizes: Mapping[str, int] | None = None, method: Method = "l1",
          seed: int = 0, *, calibration: Iterable[Any] | None = None) -> fx.GraphModule:
    """The converted network with each group cut to ``sizes`` (default: the current sizes of
    ``imodel``) by ``method``: a plain ``GraphModule`` like :meth:`IntegralModel.to_discrete`.

    ``"reconstruct"`` needs ``calibration`` (batches of inputs, see :func:`reconstruct`); the
    selection methods ignore it."""
    if method not in ("l1", "random", "reconstruct"):
        raise ValueError(f"method must be 'l1', 'random' or 'reconstruct', got {method!r}")
    if method == "reconstruct":
        if calibration is None:
            raise ValueError("method 'reconstruct' refits layers on calibration data: pass "
                             "calibration=<batches of inputs>")
        return reconstruct(imodel, sizes, calibration, seed=seed)
    groups = imodel.groups
    sizes = {groups[n].name: s for n, s in (sizes or imodel.sizes()).items()}
    keep = select_channels(imodel, sizes, method, seed)
    with torch.no_grad():
        full = imodel.tensors(imodel.full_partitions())
    plans = imodel.plans()
    tensors = {n: take_channels(t, plans[n], keep) if n in plans else t for n, t in full.items()}
    # groups not in ``sizes`` keep all their channels (not the model's current sizes)
    return imodel.discrete_from(tensors, dict({n: g.max_size for n, g in groups.items()}, **sizes))


def reconstruct(imodel: IntegralModel, sizes: Mapping[str, int] | None, calibration: Iterable[Any], *,
                select: Literal["l1", "random"] = "l1", seed: int = 0,
                ridge: float | Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
                report: dict[str, Any] | None = None) -> fx.GraphModule:
    """Channel selection followed by a least-squares refit of every layer that consumes pruned
    channels (ThiNet, Luo et al. 2017; channel pruning, He et al. 2017).

    Channels are selected by ``select`` (as :func:`prune`). Then, in graph order, each linear
    layer or convolution whose input channels shrank gets the weight and bias minimising
    ``||X W^T + b - Y||^2 + lam ||(W, b) - (W_sel, b_sel)||^2`` over ``calibration`` (batches: a
    tensor of inputs or ``(inputs, labels)`` pairs), where ``X`` is the layer's input in the pruned
    network (earlier layers already refit, so errors do not accumulate), ``Y`` the original
    network's output at that layer (its kept output channels), and ``lam`` is ``ridge`` times the
    mean diagonal of ``X^T X``. With several ``ridge`` values each layer takes the one with the
    lowest two-fold cross-validated error (even and odd calibration samples), and keeps its
    selected weights when no refit beats them on held-out samples (so a small calibration set
    does not make a layer worse by overfitting). Convolutions (1-d and 2-d, grouped and
    depthwise included) are refit on their unfolded input patches. Kept as selected (logged):
    transposed and 3-d convolutions, tied weights, and weights computed from other tensors; a
    layer whose refit would not lower its calibration error keeps its selected weights too.

    Cost: per consuming layer, two partial forward passes of every calibration batch and a few
    Cholesky solves of size (input channels x kernel taps + 1) per ``ridge`` value: 74 s for a
    ResNet-18 at 64x64 with 32 calibration images, one thread on a heavily shared machine (most
    of it in the solves of the 256- and 512-channel layers; pass one ``ridge`` to skip the
    cross-validation).

    ``report``: a dict to fill with, per consuming layer's weight, the relative output error of the
    layer on the calibration data before and after the refit (``before``, ``after``; held out:
    ``held_out_before``, ``held_out_after``), the ``ridge`` used, or why it was ``skipped``.
    """
    ridges = [ridge] if isinstance(ridge, (int, float)) else list(ridge)
    for r in ridges:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (r > 0 and math.isfinite(r)):
            raise ValueError(f"ridge must be a finite number > 0 (or a sequence of them), got {r!r}")
    if not ridges:
        raise ValueError("ridge must be a finite number > 0 (or a sequence of them), got []")
    batches = list(calibration)
    if not batches:
        raise ValueError("the calibration loader is empty")
    groups = imodel.groups
    sizes = {groups[n].name: s for n, s in (sizes or imodel.sizes()).items()}
    keep = select_channels(imodel, sizes, select, seed)
    with torch.no_grad():
        tensors = imodel.tensors(imodel.full_partitions())
    plans = imodel.plans()
    full_sizes = {n: g.max_size for n, g in groups.items()}
    full = imodel.discrete_from(tensors, full_sizes).eval()
    pruned = imodel.discrete_from(
        {n: take_channels(t, plans[n], keep) if n in plans else t for n, t in tensors.items()},
        dict(full_sizes, **sizes))
    kept = {}
    for name, plan in plans.items():
        kept[name] = [take_channels(torch.arange(plan_size(p)), (p,), keep) if any(
            a.group in keep for seg in p for a in seg) else None for p in plan]
    was_training = pruned.training
    pruned.eval()
    result = refit_consumers(full, pruned, batches, kept, [float(r) for r in ridges])
    pruned.train(was_training)
    if report is not None:
        report.update(result)
    return pruned


def finetune(model: nn.Module, teacher: nn.Module, loader: Iterable[Any], *, seconds: float | None = None,
             steps: int | None = None, lr: float = 1e-4,
             loss_fn: Callable[[Any, Any, Any], Tensor] | None = None,
             validation: Iterable[Any] | None = None, check_every: int = 50,
             progress: bool = False) -> dict[str, Any]:
    """Fine-tune every floating-point parameter of ``model`` in place (Adam, learning rate
    ``lr``) to reproduce the frozen ``teacher`` on ``loader``'s batches, until ``steps`` batches
    or ``seconds`` of wall-clock time are spent (at least one must be set; the clock is checked
    before each step).

    Batches are a tensor of inputs or ``(inputs, labels)`` pairs; a re-iterable loader is cycled,
    a one-shot iterator (a generator) ends the run when it is exhausted. ``loss_fn(output,
    batch, teacher_output)`` defaults to :func:`torchinn.train.distillation_loss` (MSE to the
    teacher's outputs). A batch whose loss is not finite is skipped (no update) and counted.
    ``model`` runs in eval mode (no dropout; gradients still flow) and gets its training flag
    and its parameters' ``requires_grad`` back at the end; ``teacher`` is left as it was.

    ``validation`` (batches held out from ``loader``): the mean loss on them is measured before
    the first step, every ``check_every`` steps and at the end, and ``model`` ends with the best
    weights measured, so fine-tuning never returns a network worse on them than it started (a
    learning rate that diverges or overfits costs time, not quality). The measurements count
    in ``seconds``.

    Returns ``{"steps", "skipped", "seconds", "first_loss", "last_loss"}`` (finite losses only;
    ``None`` when there were none); with ``validation`` also ``"validation_start"``,
    ``"validation_loss"`` (of the returned weights) and ``"best_step"`` (the step they come from).
    """
    if steps is None and seconds is None:
        raise ValueError("set steps, seconds, or both")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not seconds > 0):
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be a positive int, got {check_every!r}")
    held = None if validation is None else list(validation)
    if held is not None and not held:
        raise ValueError("the validation loader is empty")
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params:
        raise ValueError(f"{type(model).__name__} has no floating-point parameters to fine-tune")
    loss_fn = loss_fn or distillation_loss
    saved = [p.requires_grad for p in params]
    was_training, teacher_training = model.training, teacher.training
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr)
    model.eval()
    teacher.eval()
    start = time.perf_counter()
    done = skipped = 0
    first = last = None
    bar = tqdm(total=steps, desc="fine-tuning", disable=not progress, leave=False)
    batches = _batches(loader)
    keeper = _Best(model, teacher, held, loss_fn, params) if held is not None else None
    try:
        while steps is None or done + skipped < steps:
            if seconds is not None and time.perf_counter() - start >= seconds:
                break
            batch = next(batches, _END)
            if batch is _END:
                break
            inputs = batch_inputs(batch)
            with torch.no_grad():
                target = teacher(*inputs)
            loss = loss_fn(model(*inputs), batch, target)
            value = float(loss.detach())
            bar.update(1)
            if not math.isfinite(value):
                skipped += 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            last = value
            first = value if first is None else first
            bar.set_postfix(loss=f"{value:.4g}")
            if keeper is not None and done % check_every == 0:
                keeper.check(done)
        if keeper is not None:
            if done % check_every:
                keeper.check(done)
            keeper.restore()
    finally:
        bar.close()
        model.train(was_training)
        teacher.train(teacher_training)
        for p, r in zip(params, saved):
            p.requires_grad_(r)
            p.grad = None
    if skipped:
        log.warning("finetune: skipped %d of %d batches with a non-finite loss", skipped, done + skipped)
    out = {"steps": done, "skipped": skipped, "seconds": time.perf_counter() - start,
           "first_loss": first, "last_loss": last}
    if keeper is not None:
        out.update(validation_start=keeper.start, validation_loss=keeper.best, best_step=keeper.step)
    return out


class _Best:
    """The best weights of a fine-tuning run on held-out batches (the teacher's outputs cached)."""

    def __init__(self, model: nn.Module, teacher: nn.Module, held: list[Any],
                 loss_fn: Callable[[Any, Any, Any], Tensor], params: list[Tensor]) -> None:
        self.model, self.held, self.loss_fn, self.params = model, held, loss_fn, params
        with torch.no_grad():
            self.targets = [teacher(*batch_inputs(b)) for b in held]
        self.start = self.best = self.loss()
        self.step = 0
        self.state = [p.detach().clone() for p in params]
        self.current = True  # the model holds the best weights

    def loss(self) -> float:
        with torch.no_grad():
            total = sum(float(self.loss_fn(self.model(*batch_inputs(b)), b, t))
                        for b, t in zip(self.held, self.targets))
        return total / len(self.held)

    def check(self, step: int) -> None:
        value = self.loss()
        self.current = math.isfinite(value) and (value < self.best or not math.isfinite(self.best))
        if self.current:
            self.best, self.step = value, step
            self.state = [p.detach().clone() for p in self.params]

    def restore(self) -> None:
        if not self.current:
            with torch.no_grad():
                for p, s in zip(self.params, self.state):
                    p.copy_(s)


_END = object()


def _batches(loader: Iterable[Any]) -> Any:
    """The batches of ``loader``: cycled when it can be iterated again, once when it is an iterator."""
    if iter(loader) is loader:  # a generator or iterator: one pass
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the calibration loader is empty")
        return
    for epoch in itertools.count():
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty and epoch == 0:
            raise ValueError("the calibration loader is empty")
        if empty:
            return
