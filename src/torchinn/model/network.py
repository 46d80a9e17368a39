"""The top-level functions on integral networks: each takes either kind and agrees with the methods.

``torchinn.model.partitions(m)``, ``torchinn.resize(m, r)`` and ``torchinn.to_discrete(m)`` give exactly
``m.partition_map()``, ``m.resize(r)`` and ``m.to_discrete()`` for an
:class:`~torchinn.IntegralModel`, and the same for a module built from ``Integral*`` layers through
its :class:`~torchinn.model.scratch.ScratchNetwork` view (:func:`integral_network`). The protocol and
what each method means: :mod:`torchinn.model.protocol`.

>>> import torch, torchinn as inn
>>> p = inn.maths.UniformPartition(32)
>>> net = torch.nn.Sequential(inn.nn.IntegralLinear(8, p), torch.nn.ReLU(), inn.nn.IntegralLinear(p, 4))
>>> imodel = inn.convert(torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
...                                          torch.nn.Linear(32, 4)), (torch.randn(2, 8),))
>>> inn.resize(net, 0.5), inn.resize(imodel, 0.5)
({'0.out_partition': 16}, {'0.weight:0': 16})
>>> list(inn.model.partitions(imodel)) == list(imodel.groups)
True
>>> inn.to_discrete(net)[0], inn.to_discrete(imodel).get_parameter("0.weight").shape
(Linear(in_features=8, out_features=16, bias=True), torch.Size([16, 8]))
"""

from __future__ import annotations

from torch import nn

from ..maths.partition import Partition
from .protocol import IntegralNetwork, SizeSpec
from ..sizing.rounding import Multiple
from .scratch import ScratchNetwork

__all__ = ["integral_network", "partitions", "resize", "to_discrete"]


def integral_network(model: nn.Module | IntegralNetwork) -> IntegralNetwork:
    """``model`` itself if it implements :class:`~torchinn.model.protocol.IntegralNetwork` (an
    :class:`~torchinn.IntegralModel`), else the :class:`~torchinn.model.scratch.ScratchNetwork` view of a
    module built from ``Integral*`` layers."""
    if isinstance(model, IntegralNetwork):
        return model
    if isinstance(model, nn.Module):
        return ScratchNetwork(model)
    raise TypeError("expected an integral network (an IntegralModel, or an nn.Module with Integral* "
                    f"layers), got {type(model).__name__}")


def partitions(model: nn.Module | IntegralNetwork, *, resizable_only: bool = False) -> dict[str, Partition]:
    """Every group's partition by group name (``integral_network(model).partition_map()``), only
    the resizable ones with ``resizable_only``."""
    found = integral_network(model).partition_map()
    return {n: p for n, p in found.items() if p.resizable or not resizable_only}


def resize(model: nn.Module | IntegralNetwork, sizes: SizeSpec, *, multiple: Multiple = 1) -> dict[str, int]:
    """Resize groups of ``model``: one ratio in (0, 1] (a float) or size (an int) for every
    resizable group, or a mapping from group name to a size or a ratio, each rounded to the
    nearest multiple of ``multiple`` (one int, or group name -> int) or the group's full size.
    Returns every group's size (``integral_network(model).resize(sizes, multiple=multiple)``;
    the rules: :mod:`torchinn.model.protocol` and :mod:`torchinn.sizing.rounding`)."""
    net = integral_network(model)
    if isinstance(multiple, int) and not isinstance(multiple, bool) and multiple == 1:
        return net.resize(sizes)  # an IntegralNetwork of the user's own may not take multiple
    return net.resize(sizes, multiple=multiple)


def to_discrete(model: nn.Module | IntegralNetwork, *, graph: bool = False) -> nn.Module:
    """A fresh plain network at the current sizes (``integral_network(model).to_discrete()``):
    every integral layer replaced by its ``nn`` twin, no torchinn object left inside; for an
    :class:`~torchinn.IntegralModel`, a copy of the converted module's own class
    (``graph=True``: its ``torch.fx.GraphModule``, see :meth:`IntegralModel.to_discrete`).
    ``model`` is not modified."""
    net = integral_network(model)
    if not graph:
        return net.to_discrete()
    if not hasattr(net, "runtime"):
        raise TypeError(f"graph=True needs a converted network (an IntegralModel); {type(model).__name__} "
                        "is built from Integral* layers and has no graph module")
    return net.to_discrete(graph=True)  # type: ignore[call-arg]
