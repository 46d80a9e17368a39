"""Networks built from scratch with ``Integral*`` layers, seen as an :class:`IntegralNetwork`.

:class:`ScratchNetwork` is a view of such a module that implements the protocol of
:mod:`torchinn.protocol`: its groups are the module's leaf partitions, each named by the first
path it is found at; resizing changes the partitions inside the module (every layer that holds a
partition follows it); :meth:`ScratchNetwork.to_discrete` gives a fresh plain copy. An
:class:`~torchinn.IntegralModel` nested inside the module counts too: its groups are listed under
its path (``"backbone.0.weight:0"``) and ``to_discrete`` replaces it by its own discrete network.

>>> import torch
>>> from torchinn import IntegralLinear, UniformPartition
>>> p = UniformPartition(64)
>>> net = torch.nn.Sequential(IntegralLinear(8, p), torch.nn.ReLU(), IntegralLinear(p, 2))
>>> view = ScratchNetwork(net)
>>> view.resize(0.25)
{'0.out_partition': 16}
>>> view.to_discrete()
Sequential(
  (0): Linear(in_features=8, out_features=16, bias=True)
  (1): ReLU()
  (2): Linear(in_features=16, out_features=2, bias=True)
)
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .layers import IntegralLayer
from .partition import CompositePartition, Partition
from .protocol import IntegralNetwork, SizeSpec, plan_sizes, set_sizes, unknown_group
from .rounding import Multiple

__all__ = ["ScratchNetwork"]


def _nested(model: nn.Module) -> dict[str, IntegralNetwork]:
    """The outermost submodules of ``model`` (not ``model`` itself) that implement the protocol."""
    found: dict[str, IntegralNetwork] = {}
    for name, module in model.named_modules():
        if name and isinstance(module, IntegralNetwork) and not any(name.startswith(n + ".") for n in found):
            found[name] = module
    return found


class ScratchNetwork:
    """The :class:`~torchinn.protocol.IntegralNetwork` view of a module built from ``Integral*``
    layers. It holds ``module`` (not a copy): :meth:`resize` changes the module's partitions, and
    calling the view calls the module."""

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"ScratchNetwork needs an nn.Module, got {type(module).__name__}")
        if isinstance(module, IntegralNetwork):
            raise TypeError(f"{type(module).__name__} is an integral network itself; use it directly")
        self.module = module

    def partition_map(self) -> dict[str, Partition]:
        """The module's leaf partitions, each named by the first path it is found at (a nested
        integral network's by its path and its own group names)."""
        nested = _nested(self.module)
        found: dict[str, Partition] = {}
        seen: set[int] = set()
        for name, module in self.module.named_modules(remove_duplicate=False):
            if name in nested:
                for group, p in nested[name].partition_map().items():
                    if id(p) not in seen:
                        seen.add(id(p))
                        found[f"{name}.{group}"] = p
            elif (isinstance(module, Partition) and not isinstance(module, CompositePartition)
                  and id(module) not in seen and not any(name.startswith(n + ".") for n in nested)):
                seen.add(id(module))
                found[name] = module
        return found

    def sizes(self) -> dict[str, int]:
        """Every group's current size."""
        return {name: p.size for name, p in self.partition_map().items()}

    def resize(self, sizes: SizeSpec, *, multiple: Multiple = 1) -> dict[str, int]:
        """Set group sizes (see :mod:`torchinn.protocol`), rounded to ``multiple`` (one int, or
        group name -> int; :mod:`torchinn.rounding`); a name may also be an integral layer's path,
        for the partition of its outputs. Returns every group's size."""
        parts = self.partition_map()

        def find(name: str) -> str:
            if name in parts:
                return name
            try:
                layer = self.module.get_submodule(name) if isinstance(name, str) else None
            except AttributeError:
                layer = None
            out = getattr(layer, "out_partition", None) if isinstance(layer, IntegralLayer) else None
            hit = [n for n, p in parts.items() if p is out]
            if hit:
                return hit[0]
            raise unknown_group(name, parts)

        set_sizes(plan_sizes(parts, sizes, find, multiple))
        return self.sizes()

    def to_discrete(self) -> nn.Module:
        """A fresh plain copy of the module at the current sizes: every integral layer (and nested
        integral network) replaced by its plain twin, no torchinn object left inside. The module
        is not modified."""
        return _discrete_copy(self.module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ScratchNetwork({type(self.module).__name__}, sizes={self.sizes()})"


def _discrete_copy(model: nn.Module) -> nn.Module:
    if isinstance(model, (IntegralLayer, IntegralNetwork)):
        return model.to_discrete()
    swaps: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, (IntegralLayer, IntegralNetwork)) and not any(name.startswith(s + ".") for s in swaps):
            swaps[name] = module.to_discrete()
    # Copy everything except what is replaced (integral layers, nested networks, partitions).
    memo: dict[int, Any] = {}
    for name in swaps:
        memo[id(model.get_submodule(name))] = None
    for m in model.modules():
        if isinstance(m, Partition):
            memo[id(m)] = None
    out = copy.deepcopy(model, memo)
    for name, new in swaps.items():
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, new)
    leftovers = [n for n, m in out.named_modules()
                 if isinstance(m, (IntegralLayer, Partition, IntegralNetwork))]
    if leftovers:
        raise TypeError(f"torchinn modules left after to_discrete at {leftovers}")
    return out
