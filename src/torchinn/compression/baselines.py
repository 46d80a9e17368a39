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
* ``"activation"``: the channel-level form of Wanda (Sun et al., 2023, ``|W| x ||x||``): keep the
  channels whose activations, RMS over calibration data, times the L1 norm of the weights that
  read them are largest (:func:`torchinn.compression.starts.activation_importance`; groups read by no
  convolution or linear layer fall back to L1);
* ``"reconstruct"``: ThiNet (Luo et al., 2017) / channel pruning (He et al., 2017): L1 selection,
  then every layer that consumes pruned channels is refit by least squares on calibration
  activations to reproduce the original network's output at that layer (:func:`reconstruct`).

:func:`torchinn.training.train.finetune` trains all the weights of any of them against the original network
for a time or step budget (the "same seconds of fine-tuning" every method gets in a comparison;
it is the loop :func:`torchinn.compress` tunes its weights with).

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
>>> from torchinn.training.train import TuneConfig, finetune
>>> report = finetune(refit, calibration, teacher=net, tune=TuneConfig(steps=10, seconds=None, progress=False))
>>> report["steps"]
10
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, fx

from . import clock as timer
from ..model.integral_model import IntegralModel
from .importance import activation_importance, channel_importance
from ..options import check_choice, check_number
from .refit import MAX_SYSTEM_BYTES, refit_consumers
from ..maths.structured import plan_size, take_channels

__all__ = ["select_channels", "prune", "reconstruct"]

log = logging.getLogger(__name__)

Method = Literal["l1", "random", "activation", "reconstruct"]
SELECTIONS = ("l1", "random", "activation")


def select_channels(imodel: IntegralModel, sizes: Mapping[str, int], method: Method = "l1",
                    seed: int = 0, calibration: Iterable[Any] | None = None,
                    scores: Mapping[str, Tensor] | None = None, *,
                    tensors: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Sorted indices of the channels each group keeps (groups not in ``sizes`` keep all);
    ``"activation"`` needs ``calibration`` (batches of inputs). ``scores`` (group -> one score
    per channel, the largest kept) overrides ``method`` for the groups it names. ``tensors``: the
    full-size tensors by name, when the caller holds them (the L1 norms read them instead of
    sampling a copy)."""
    check_choice(method, SELECTIONS, "method")
    groups = imodel.groups
    gen = torch.Generator().manual_seed(seed)
    base = channel_importance(imodel, tensors) if method != "random" else None
    if method == "activation":
        from ..model.inputs import batch_inputs

        if calibration is None:
            raise ValueError("method 'activation' weighs channels by their activations: pass "
                             "calibration=<batches of inputs>")
        act = activation_importance(imodel, [batch_inputs(b) for b in calibration])
        base = {g: act.get(g, s) for g, s in (base or {}).items()}
    out = {}
    for name, size in sizes.items():
        g = groups[name]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= g.max_size:
            raise ValueError(f"group {g.name!r} has {g.max_size} channels; size must be in "
                             f"[1, {g.max_size}], got {size!r}")
        given = (scores or {}).get(g.name)
        if given is not None:
            if given.shape != (g.max_size,):
                raise ValueError(f"scores of group {g.name!r} must have shape ({g.max_size},), "
                                 f"got {tuple(given.shape)}")
            keep = torch.topk(given.detach().double().cpu(), size).indices
        elif base is not None:
            keep = torch.topk(base[g.name], size).indices
        else:
            keep = torch.randperm(g.max_size, generator=gen)[:size]
        out[g.name] = torch.sort(keep).values
    return out


def prune(imodel: IntegralModel, sizes: Mapping[str, int] | None = None, method: Method = "l1",
          seed: int = 0, *, calibration: Iterable[Any] | None = None) -> fx.GraphModule:
    """The converted network with each group cut to ``sizes`` (default: the current sizes of
    ``imodel``) by ``method``: a plain ``GraphModule`` like :meth:`IntegralModel.to_discrete`.

    ``"reconstruct"`` and ``"activation"`` need ``calibration`` (batches of inputs, see
    :func:`reconstruct`); the other selection methods ignore it."""
    check_choice(method, (*SELECTIONS, "reconstruct"), "method")
    if method == "reconstruct":
        if calibration is None:
            raise ValueError("method 'reconstruct' refits layers on calibration data: pass "
                             "calibration=<batches of inputs>")
        return reconstruct(imodel, sizes, calibration, seed=seed)
    return _selected(imodel, sizes, method, seed, calibration)[0]


def _selected(imodel: IntegralModel, sizes: Mapping[str, int] | None, method: str, seed: int,
              calibration: Iterable[Any] | None = None, scores: Mapping[str, Tensor] | None = None,
              full: Mapping[str, Tensor] | None = None) -> tuple[fx.GraphModule, dict[str, Tensor], dict[str, Tensor]]:
    """The network cut to ``sizes`` by ``method``, the full-size tensors (``full`` when given:
    they are not sampled again), and the kept indices."""
    groups = imodel.groups
    sizes = {groups[n].name: s for n, s in (sizes or imodel.sizes()).items()}
    keep = select_channels(imodel, sizes, method, seed, calibration, scores, tensors=full)
    if full is None:
        with torch.no_grad():
            full = imodel.tensors(imodel.full_partitions())
    plans = imodel.plans()
    # each tensor copied once: the cut ones are new, the others cloned here (the network holds them)
    tensors = {n: take_channels(t, plans[n], keep) if n in plans else t for n, t in full.items()}
    tensors = {n: t.detach().clone() if t is full[n] else t for n, t in tensors.items()}
    # groups not in ``sizes`` keep all their channels (not the model's current sizes)
    pruned = imodel.discrete_from(tensors, dict({n: g.max_size for n, g in groups.items()}, **sizes), copy=False)
    return pruned, dict(full), keep


def _tensors_of(gm: fx.GraphModule, imodel: IntegralModel) -> dict[str, Tensor]:
    """The tensors of ``imodel`` held by its full-size graph module ``gm``, by name (parameters
    and buffers). One that no op of ``gm`` reads is not in it (a dead branch: BERT's pooler
    under a sentence embedder): those are sampled from ``imodel`` at full size."""
    named = dict(gm.named_parameters(remove_duplicate=False), **dict(gm.named_buffers(remove_duplicate=False)))
    names = imodel.tensor_names
    missing = [n for n in names if n not in named]
    if len(missing) == len(names):
        raise ValueError(f"the teacher has no tensor named {missing[0]!r}: pass the full-size graph module of this "
                         "model (to_discrete(graph=True) at full size)")
    spare = imodel.tensors(imodel.full_partitions(), missing) if missing else {}  # only those are sampled
    return {n: (named[n] if n in named else spare[n]).detach() for n in names}


def reconstruct(imodel: IntegralModel, sizes: Mapping[str, int] | None, calibration: Iterable[Any], *,
                select: Literal["l1", "random"] = "l1", seed: int = 0,
                ridge: float | Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
                max_system_bytes: int = MAX_SYSTEM_BYTES,
                max_seconds: float | None = None, scores: Mapping[str, Tensor] | None = None,
                teacher: fx.GraphModule | None = None) -> fx.GraphModule:
    """Channel selection followed by a least-squares refit of every layer that consumes pruned
    channels (ThiNet, Luo et al. 2017; channel pruning, He et al. 2017).

    Channels are selected by ``select`` (as :func:`prune`), or for the groups in ``scores``
    (group -> one score per channel) by those scores (:func:`torchinn.compress` passes the
    activation or Fisher scores of the start it chose, so that the layers a deadline leaves
    unrefit keep that start's channels rather than L1's). Then, in graph order, each linear
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
    layer whose refit would not lower its calibration error keeps its selected weights too, and so
    does a layer whose float64 normal equations would take more than ``max_system_bytes`` (default
    :data:`torchinn.compression.refit.MAX_SYSTEM_BYTES`, 512 MiB: five matrices of ``(features + 1)^2`` per
    convolution group; a 1-d convolution of 512 channels and 64 taps would need 43 GB), logged and
    reported as ``skipped`` with its size, before anything of it is computed.

    Cost: one forward pass of every calibration batch through the pruned and the full network
    (each layer's capture resumes where the previous one stopped: the values before it do not
    change), and per consuming layer a few Cholesky solves of size (input channels x kernel taps
    + 1) per ``ridge`` value (pass one ``ridge`` to skip the cross-validation): 7-8 s for
    EfficientNet-Lite0 at 128x128 with 256 calibration images on one core, 20 s when every layer
    ran its own passes. Each batch gives a layer at most ``max(256, 64 x features / batches)``
    rows, a convolution's at output positions drawn at random, seeded (as ThiNet samples
    positions): on EDSR with 32 batches of patches 22 s instead of 42 s, a held-out error 3%
    higher.

    ``max_seconds``: the layers not started within it (counted from the call) keep their selected
    weights and are reported as skipped: a partly refit network, consistent, returned on time.

    ``teacher``: the full-size graph module of ``imodel`` (``to_discrete(graph=True)`` at full
    size, or :meth:`~torchinn.IntegralModel.shared_discrete`), when the caller holds one: the
    selection and the refit read its tensors and run it instead of sampling a full-size copy.

    The network returned carries ``refit_report``: per consuming layer's weight, the relative output error
    of the layer on the calibration data before and after the refit (``before``, ``after``; held
    out: ``held_out_before``, ``held_out_after``), the ``ridge`` used, or why it was ``skipped``.
    """
    check_choice(select, ("l1", "random"), "select")
    ridges = [ridge] if isinstance(ridge, (int, float)) else list(ridge)
    if isinstance(max_system_bytes, bool) or not isinstance(max_system_bytes, int) or max_system_bytes < 1:
        raise ValueError(f"max_system_bytes must be an int >= 1 (bytes), got {max_system_bytes!r}")
    for r in ridges:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (r > 0 and math.isfinite(r)):
            raise ValueError(f"ridge must be a finite number > 0 (or a sequence of them), got {r!r}")
    if not ridges:
        raise ValueError("ridge must be a finite number > 0 (or a sequence of them), got []")
    if max_seconds is not None:
        check_number(max_seconds, "max_seconds", 0)
    deadline = None if max_seconds is None else timer.now() + max_seconds
    batches = list(calibration)
    if not batches:
        raise ValueError("the calibration loader is empty")
    given = None if teacher is None else _tensors_of(teacher, imodel)
    pruned, tensors, keep = _selected(imodel, sizes, select, seed, scores=scores, full=given)
    plans = imodel.plans()
    full = imodel.discrete_from(tensors, {n: g.max_size for n, g in imodel.groups.items()},
                                copy=False) if teacher is None else teacher
    del tensors
    kept = {}
    for name, plan in plans.items():
        kept[name] = [take_channels(torch.arange(plan_size(p)), (p,), keep) if any(
            a.group in keep for seg in p for a in seg) else None for p in plan]
    was_training, teacher_training = pruned.training, full.training
    pruned.eval()
    full.eval()
    try:
        result = refit_consumers(full, pruned, batches, kept, [float(r) for r in ridges], max_bytes=max_system_bytes,
                                 deadline=deadline)
    finally:
        pruned.train(was_training)
        full.train(teacher_training)
    pruned.refit_report = result
    return pruned
