"""Baselines on the same groups and sizes: L1-norm and random channel selection.

Every comparison in torchinn is INN versus plain structured pruning at *equal sizes* (hence equal
parameter counts and FLOPs): the baselines keep ``size`` of each group's original channels and
drop the rest, in every tensor of the group, with no interpolation and no rescaling.

* ``"l1"``: Li et al., *Pruning Filters for Efficient ConvNets* (2016), the channel selection the
  paper compares against: keep the channels whose producing filters have the largest L1 norm
  (summed over every tensor that produces the group, e.g. all the convolutions adding into a
  residual stream);
* ``"random"``: a uniformly random subset (seeded).

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> imodel = inn.convert(net, (torch.randn(2, 8),))
>>> pruned = prune(imodel, {"0.weight:0": 8}, "l1")
>>> pruned.get_parameter("0.weight").shape, pruned.get_parameter("2.weight").shape
(torch.Size([8, 8]), torch.Size([4, 8]))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, fx

from .integral_model import IntegralModel
from .structured import take_channels

__all__ = ["channel_importance", "select_channels", "prune"]

Method = Literal["l1", "random"]


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
          seed: int = 0) -> fx.GraphModule:
    """The converted network with each group cut to ``sizes`` (default: the current sizes of
    ``imodel``) by ``method``: a plain ``GraphModule`` like :meth:`IntegralModel.to_discrete`."""
    groups = imodel.groups
    sizes = {groups[n].name: s for n, s in (sizes or imodel.sizes()).items()}
    keep = select_channels(imodel, sizes, method, seed)
    with torch.no_grad():
        full = imodel.tensors(imodel.full_partitions())
    plans = imodel.plans()
    tensors = {n: take_channels(t, plans[n], keep) if n in plans else t for n, t in full.items()}
    return imodel.discrete_from(tensors, sizes)
