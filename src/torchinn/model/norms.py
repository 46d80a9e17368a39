"""Batch norms of integral networks: re-estimating their statistics at the sizes you deploy.

A network trained with :class:`~torchinn.RandomSizes` runs at a new width at every step, so
running statistics gathered during training would mix widths and fit none of them. As universally
slimmable networks do (Yu & Huang, 2019, "BN calibration"), a network from
:func:`torchinn.from_scratch` normalises by each batch's own statistics while it trains and leaves
its running statistics alone; once you have chosen the sizes to deploy, :func:`recalibrate_bn`
runs a few batches at those sizes, averages the batch statistics of every batch norm and stores
them. ``imodel(x)`` in eval mode and ``imodel.to_discrete()`` then use them.

The running statistics of an :class:`~torchinn.IntegralModel` are continuous functions of their
channel group like its biases; recalibration changes their control values as little as possible
(least squares) so that sampling them at the current sizes gives exactly the new statistics. At
other sizes they are whatever those control values interpolate to: recalibrate again after
:meth:`~torchinn.IntegralModel.resize`. A sampled variance below zero (interpolation can
overshoot) is read as zero.

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
...                           torch.nn.Linear(8, 2))
>>> imodel = inn.from_scratch(net, torch.randn(2, 4))
>>> _ = imodel.resize(0.5)
>>> inn.recalibrate_bn(imodel, [torch.randn(16, 4) for _ in range(3)])
3
>>> imodel.to_discrete().get_buffer("1.running_mean").shape
torch.Size([4])
"""

from __future__ import annotations

import copy
import itertools
import logging
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, fx, nn

from ..graph.norms import batch_norm_kind
from .inputs import batch_inputs, input_problem, run
from .integral_model import IntegralModel
from ..maths.partition import Partition
from ..maths.structured import StructuredFunction

__all__ = ["fit_samples", "recalibrate_bn"]

log = logging.getLogger(__name__)
aten = torch.ops.aten


def recalibrate_bn(model: nn.Module, calibration: Iterable[Any], *, max_batches: int | None = None) -> int:
    """Re-estimate the running statistics of every batch norm of ``model`` at its current sizes
    from the batches of ``calibration`` (each a tensor, or an ``(inputs, labels)`` pair); returns how
    many batches it used. The mean and the (unbiased) variance are averaged over the batches, as
    ``nn.BatchNorm2d(momentum=None)`` does; dropout is off meanwhile.

    ``model`` is changed in place, like :meth:`~torchinn.IntegralModel.resize` changes it:

    * an :class:`~torchinn.IntegralModel` (from :func:`torchinn.from_scratch`, or converted with
      ``ConvertConfig(fuse_batch_norm=False)``): its statistics become, at the current sizes,
      exactly the measured ones (see the module notes); call it after choosing the sizes and
      before ``to_discrete()``;
    * any other ``nn.Module``: its ``nn.BatchNorm*`` modules' running statistics.

    ``max_batches`` stops after that many batches (``calibration`` may be an endless loader).
    """
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be an int >= 1 or None, got {max_batches!r}")
    if isinstance(calibration, Tensor):
        raise TypeError("calibration must be an iterable of batches (e.g. a DataLoader or a list of "
                        "tensors), got one tensor: wrap it in a list")
    if max_batches is not None:
        calibration = itertools.islice(calibration, max_batches)
    if isinstance(model, IntegralModel):
        return _recalibrate_integral(model, calibration)
    if isinstance(model, nn.Module):
        return _recalibrate_plain(model, calibration)
    raise TypeError(f"recalibrate_bn needs an IntegralModel or an nn.Module, got {type(model).__name__}")


def _inputs(batch: Any) -> tuple:
    return batch_inputs(batch)


def _no_batches() -> ValueError:
    return ValueError("calibration gave no batch: recalibrate_bn needs at least 1")


def _recalibrate_plain(model: nn.Module, batches: Iterable[Any]) -> int:
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no nn.BatchNorm module with running statistics; "
                         "a network from IntegralModel.to_discrete() holds its batch norms as graph "
                         "ops: recalibrate the integral model before to_discrete()")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    count = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        with torch.no_grad():
            for batch in batches:
                run(model, _inputs(batch))
                count += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, momentum in momenta.items():
            m.momentum = momentum
    if count == 0:
        raise _no_batches()
    return count


def _calibration_graph(runtime: fx.GraphModule) -> fx.GraphModule:
    """A copy of the runtime graph whose batch norms overwrite their running statistics with
    the batch's (momentum 1)."""
    gm = copy.deepcopy(runtime)
    for node in gm.graph.nodes:
        kind = batch_norm_kind(node)
        if kind is not None and kind.momentum < len(node.args):
            args = list(node.args)
            args[kind.momentum] = 1.0
            node.args = tuple(args)
    gm.recompile()
    return gm


def _recalibrate_integral(model: Any, batches: Iterable[Any]) -> int:
    stats = model.norm_statistics()
    if not stats:
        raise ValueError("the integral model has no batch norm with running statistics (converted "
                         "with ConvertConfig(fuse_batch_norm=True), batch norms are folded into the "
                         "convolutions; with track_running_stats=False, they always normalise by the "
                         "batch's statistics and need none); build it with torchinn.from_scratch or "
                         "ConvertConfig(fuse_batch_norm=False)")
    names = [n for pair in stats for n in pair]
    index = {n: i for i, n in enumerate(model.tensor_names)}
    gm = _calibration_graph(model.runtime)
    sums: dict[str, Tensor] = {}
    count = 0
    with torch.no_grad():
        tensors, scales = model._sample()
        tensors = list(tensors)
        sizes = list(model.sizes().values())
        for batch in batches:
            inputs = _inputs(batch)
            flat, problem = input_problem(model, inputs, inputs.kwargs, dtypes=True)
            if problem is not None:
                raise ValueError(f"batch {count}: {problem}")
            for n in names:  # fresh tensors: the graph writes the batch statistics into them
                tensors[index[n]] = torch.zeros_like(tensors[index[n]])
            gm(tensors, sizes, scales, False, True, *flat)
            for n in names:
                t = tensors[index[n]].double()
                sums[n] = t if n not in sums else sums[n] + t
            count += 1
    if count == 0:
        raise _no_batches()
    parts = model.partition_map()
    for n in names:
        _store(model, n, sums[n] / count, parts)
    model._cache.clear()
    model._stats_sizes = model.sizes()
    return count


def _store(model: Any, name: str, target: Tensor, parts: Mapping[str, Partition]) -> None:
    key = name.replace(".", "/")
    if key in model.functions:
        fit_samples(model.functions[key], parts, target, name)
    else:
        buf = getattr(model.fixed, key)
        buf.copy_(target.to(buf.dtype))


class _Sampler(nn.Module):
    def __init__(self, fn: StructuredFunction, parts: Mapping[str, Partition]) -> None:
        super().__init__()
        self.fn = fn
        self.parts = dict(parts)

    def forward(self) -> Tensor:
        return self.fn.sample(self.parts)


def fit_samples(fn: StructuredFunction, parts: Mapping[str, Partition], target: Tensor,
                name: str = "tensor") -> None:
    """Change the control values of ``fn`` as little as possible (least squares) so that sampling
    it on ``parts`` gives ``target``. Sampling is linear in the control values: with ``J`` its
    matrix, the change is ``pinv(J) (target - J c)``."""
    blocks = [b.values for b in fn.blocks]
    old = torch.cat([v.detach().reshape(-1) for v in blocks]).double()
    sampler = _Sampler(fn, parts)
    keys = [f"fn.blocks.{i}.values" for i in range(len(blocks))]

    def sample(flat: Tensor) -> Tensor:
        pieces, start = {}, 0
        for k, v in zip(keys, blocks):
            pieces[k] = flat[start:start + v.numel()].reshape(v.shape)
            start += v.numel()
        return torch.func.functional_call(sampler, pieces, (), strict=False).double().reshape(-1)

    with torch.enable_grad():
        jac = torch.autograd.functional.jacobian(sample, old)
    goal = target.reshape(-1).to(old)
    if jac.shape[0] != goal.numel():
        raise RuntimeError(f"internal error: {name} samples {jac.shape[0]} values at these sizes, "
                           f"the statistics have {goal.numel()}")
    new = old + torch.linalg.pinv(jac) @ (goal - jac @ old)
    miss = float((jac @ new - goal).abs().max()) if goal.numel() else 0.0
    if miss > 1e-4 * (float(goal.abs().max()) + 1e-6):
        warnings.warn(f"{name}: the recalibrated statistics are reproduced only to {miss:.3g} at "
                      "these sizes (the partition's points are too close together)", stacklevel=3)
    start = 0
    with torch.no_grad():
        for v in blocks:
            v.copy_(new[start:start + v.numel()].reshape(v.shape).to(v.dtype))
            start += v.numel()
