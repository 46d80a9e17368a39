"""The top-level functions on integral networks: each agrees with the method of the same name.

``torchinn.model.partitions(m)``, ``torchinn.resize(m, r)`` and ``torchinn.to_discrete(m)`` give exactly
``m.partition_map()``, ``m.resize(r)`` and ``m.to_discrete()`` for an :class:`~torchinn.IntegralModel`
(from :func:`torchinn.convert` or :func:`torchinn.from_scratch`) or any other
:class:`~torchinn.model.protocol.IntegralNetwork`. A module of ``Integral*`` layers is a declaration:
:func:`torchinn.from_scratch` turns it into its :class:`~torchinn.IntegralModel` first (the protocol
and what each method means: :mod:`torchinn.model.protocol`).

>>> import torch, torchinn as inn
>>> p = inn.maths.UniformPartition(32)
>>> net = torch.nn.Sequential(inn.nn.IntegralLinear(8, p), torch.nn.ReLU(), inn.nn.IntegralLinear(p, 4))
>>> imodel = inn.from_scratch(net, (torch.randn(2, 8),))
>>> inn.resize(imodel, 0.5)
{'0.weight:0': 16}
>>> list(inn.model.partitions(imodel)) == list(imodel.groups)
True
>>> inn.to_discrete(imodel)[0]
Linear(in_features=8, out_features=16, bias=True)
>>> inn.resize(net, 0.5)
Traceback (most recent call last):
...
TypeError: Sequential is built from Integral* layers, a declaration of an integral network: torchinn.from_scratch(model, example_inputs) gives its IntegralModel, which resizes, trains with RandomSizes and gives the plain network
"""

from __future__ import annotations

from torch import nn

from ..maths.partition import Partition
from ..nn.layers import IntegralLayer
from .protocol import IntegralNetwork, SizeSpec
from ..sizing.rounding import Multiple

__all__ = ["integral_network", "partitions", "resize", "to_discrete"]


def integral_network(model: IntegralNetwork) -> IntegralNetwork:
    """``model`` itself if it implements :class:`~torchinn.model.protocol.IntegralNetwork` (an
    :class:`~torchinn.IntegralModel`); a ``TypeError`` saying what to do otherwise (a module of
    ``Integral*`` layers: :func:`torchinn.from_scratch` first)."""
    if isinstance(model, IntegralNetwork):
        return model
    name = type(model).__name__
    if isinstance(model, nn.Module) and any(isinstance(m, IntegralLayer) for m in model.modules()):
        raise TypeError(f"{name} is built from Integral* layers, a declaration of an integral network: "
                        "torchinn.from_scratch(model, example_inputs) gives its IntegralModel, which resizes, "
                        "trains with RandomSizes and gives the plain network")
    raise TypeError(f"expected an integral network (an IntegralModel from torchinn.convert or "
                    f"torchinn.from_scratch), got {name}")


def partitions(model: IntegralNetwork, *, resizable_only: bool = False) -> dict[str, Partition]:
    """Every group's partition by group name (``integral_network(model).partition_map()``), only
    the resizable ones with ``resizable_only``."""
    found = integral_network(model).partition_map()
    return {n: p for n, p in found.items() if p.resizable or not resizable_only}


def resize(model: IntegralNetwork, sizes: SizeSpec, *, multiple: Multiple = 1) -> dict[str, int]:
    """Resize groups of ``model``: one ratio in (0, 1] (a float) or size (an int) for every
    resizable group, or a mapping from group name to a size or a ratio, each rounded to the
    nearest multiple of ``multiple`` (one int, or group name -> int) or the group's full size.
    Returns every group's size (``integral_network(model).resize(sizes, multiple=multiple)``;
    the rules: :mod:`torchinn.model.protocol` and :mod:`torchinn.sizing.rounding`)."""
    net = integral_network(model)
    if isinstance(multiple, int) and not isinstance(multiple, bool) and multiple == 1:
        return net.resize(sizes)  # an IntegralNetwork of the user's own may not take multiple
    return net.resize(sizes, multiple=multiple)


def to_discrete(model: IntegralNetwork, *, graph: bool = False) -> nn.Module:
    """A fresh plain network at the current sizes (``integral_network(model).to_discrete()``), no
    torchinn object left inside: for an :class:`~torchinn.IntegralModel`, a copy of the converted
    module's own class (``graph=True``: its ``torch.fx.GraphModule``, see
    :meth:`IntegralModel.to_discrete`). ``model`` is not modified."""
    net = integral_network(model)
    if not graph:
        return net.to_discrete()
    if not hasattr(net, "runtime"):
        raise TypeError(f"graph=True needs an IntegralModel; {type(model).__name__} has no graph module")
    return net.to_discrete(graph=True)  # type: ignore[call-arg]
