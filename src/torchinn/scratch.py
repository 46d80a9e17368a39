"""Whole-network operations on modules that contain integral layers.

>>> import torch
>>> from torchinn import IntegralLinear, UniformPartition, resize
>>> p = UniformPartition(64)
>>> net = torch.nn.Sequential(IntegralLinear(8, p), torch.nn.ReLU(), IntegralLinear(p, 2))
>>> _ = resize(net, 0.25)
>>> to_discrete(net)
Sequential(
  (0): Linear(in_features=8, out_features=16, bias=True)
  (1): ReLU()
  (2): Linear(in_features=16, out_features=2, bias=True)
)
"""

from __future__ import annotations

import copy

from torch import nn

from .layers import IntegralLayer
from .partition import Partition

__all__ = ["to_discrete"]


def to_discrete(model: nn.Module) -> nn.Module:
    """A fresh plain copy of ``model`` at the current sizes: every integral layer replaced by its
    ``nn`` twin, and no torchinn object left inside. ``model`` is not modified."""
    if isinstance(model, IntegralLayer):
        return model.to_discrete()
    swaps: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, IntegralLayer) and not any(name.startswith(s + ".") for s in swaps):
            swaps[name] = module.to_discrete()
    memo = {id(m): None for m in swaps.values()}
    # Copy everything except what is replaced (integral layers and their partitions).
    for name in swaps:
        layer = model.get_submodule(name)
        memo[id(layer)] = None
    for m in model.modules():
        if isinstance(m, Partition):
            memo[id(m)] = None
    out = copy.deepcopy(model, memo)
    for name, new in swaps.items():
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, new)
    leftovers = [n for n, m in out.named_modules() if isinstance(m, (IntegralLayer, Partition))]
    if leftovers:
        raise TypeError(f"torchinn modules left after to_discrete at {leftovers}")
    return out
