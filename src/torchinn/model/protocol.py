"""The protocol every integral network implements, and the size rules they share.

torchinn has one runtime: the :class:`~torchinn.IntegralModel`, made by :func:`torchinn.convert`
from a trained network or by :func:`torchinn.from_scratch` from an untrained one (plain layers, or
``Integral*`` layers: a module of those is a declaration of the model ``from_scratch`` builds). It
implements :class:`IntegralNetwork`, and so may a class of your own.

An :class:`IntegralNetwork` has *groups*: named sets of channels that share one partition, so one
size, named by a tensor dimension in them (``"layer1.0.conv1.weight:0"``) whichever way the model
was made. The four methods, and what they mean:

``partition_map() -> dict[str, Partition]``
    every group's partition, by group name (resizable or not), in a fixed order;
``sizes() -> dict[str, int]``
    every group's current size (number of channels), by group name;
``resize(sizes) -> dict[str, int]``
    one ratio in (0, 1] (a ``float``) or one size (an ``int``) for every *resizable* group, or a
    mapping from group name (or the name of the module that produces the group) to a size or a
    ratio. A ratio gives ``round(ratio * max_size)``, moved to the nearest size the group's
    quadrature allows (Simpson's rule: odd). A group with a fixed size (a ``FixedPartition``, or a
    ``TrainablePartition`` after grid tuning) takes only its own size, so ``resize(sizes())``
    always works and changes nothing. Every entry is checked before any group changes.
    Returns :meth:`sizes` afterwards (every group, not only those given). With ``multiple=m``
    (one int, or group name -> int) every size asked is rounded to the nearest multiple of
    ``m`` or the group's full size (:mod:`torchinn.sizing.rounding`);
``to_discrete() -> nn.Module``
    a fresh plain network at the current sizes, with no torchinn object inside; the integral
    network is not modified. An :class:`~torchinn.IntegralModel` gives back a copy of the module it
    was made from (its own class, smaller layers of the same types, ``nn`` twins for ``Integral*``
    layers; ``to_discrete(graph=True)``: the ``torch.fx.GraphModule`` it runs).

The top-level functions :func:`torchinn.model.partitions`, :func:`torchinn.resize` and
:func:`torchinn.to_discrete`, and :class:`torchinn.RandomSizes`, take any integral network and give
exactly what these methods give.
Other words keep one meaning each: a partition's ``weights()`` are its quadrature weights; an
integral layer's or model's ``sampled()`` are its tensors sampled at the current sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from torch import nn

from ..maths.partition import Partition
from ..options import unknown_group
from ..sizing.rounding import Multiple, resolve_multiple, round_size

__all__ = ["IntegralNetwork", "SizeSpec", "plan_sizes", "set_sizes"]

#: what ``resize`` takes: one ratio or size for all resizable groups, or one per group name
SizeSpec = float | int | Mapping[str, float | int]


@runtime_checkable
class IntegralNetwork(Protocol):
    """A network whose channel groups can be resized: an :class:`~torchinn.IntegralModel` (from
    :func:`torchinn.convert` or :func:`torchinn.from_scratch`). The rules are in
    :mod:`torchinn.model.protocol`."""

    def partition_map(self) -> dict[str, Partition]:
        """Every group's partition (resizable or not), by group name, in a fixed order."""
        ...

    def sizes(self) -> dict[str, int]:
        """Every group's current size (number of channels), by group name."""
        ...

    def resize(self, sizes: SizeSpec, *, multiple: Multiple = 1) -> dict[str, int]:
        """One ratio (float) or size (int) for every resizable group, or a mapping from group name
        (or the module producing it) to a size or ratio, rounded to ``multiple``; all checked
        before any change. Returns every group's size afterwards."""
        ...

    def to_discrete(self) -> nn.Module:
        """A fresh plain network at the current sizes, with no torchinn object inside."""
        ...


def _size_for(name: str, p: Partition, value: object, multiple: int = 1) -> int | None:
    """The size ``value`` asks of group ``name``, rounded to ``multiple`` (see
    :mod:`torchinn.sizing.rounding`); ``None`` for a fixed group given its own size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"size for group {name!r} must be an int or a float ratio, got {value!r}")
    if not p.resizable:
        if isinstance(value, int) and value == p.size:
            return None
        raise ValueError(f"group {name!r} has a {type(p).__name__}, which has a fixed size "
                         f"({p.size}); got {value!r}")
    n = p.max_size
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"group {name!r}: a ratio must be in (0, 1], got {value}")
        if multiple > 1:
            return round_size(max(1, round(value * n)), n, multiple, p.quadrature.allows)
        return p.quadrature.nearest_size(max(1, round(value * n)), high=n)
    if not 1 <= value <= n:
        raise ValueError(f"group {name!r} has {n} channels; size must be in [1, {n}], got {value}")
    if multiple > 1:
        return round_size(value, n, multiple, p.quadrature.allows)
    p.quadrature.check_size(value)
    return value


def plan_sizes(partitions: Mapping[str, Partition], sizes: SizeSpec,
               find: Callable[[str], str] | None = None, multiple: Multiple = 1) -> list[tuple[Partition, int]]:
    """Check ``sizes`` (see :meth:`IntegralNetwork.resize`) against ``partitions`` (group name ->
    partition) and return the partitions to resize with their new sizes, rounded to ``multiple``
    (one int, or group name -> int; see :mod:`torchinn.sizing.rounding`); nothing is changed.

    ``find`` maps a name the user gave to a group name, raising ``KeyError`` for an unknown one
    (default: exact names only)."""
    if find is None:
        def find(name: str) -> str:
            if name not in partitions:
                raise unknown_group(name, partitions)
            return name
    multiples = resolve_multiple(multiple, list(partitions), find)
    if isinstance(sizes, Mapping):
        entries = [(find(name), value) for name, value in sizes.items()]
    else:
        entries = [(name, sizes) for name, p in partitions.items() if p.resizable]
    plan = [(partitions[name], _size_for(name, partitions[name], value, multiples[name])) for name, value in entries]
    return [(p, size) for p, size in plan if size is not None]


def set_sizes(plan: list[tuple[Partition, int]]) -> None:
    """Resize every partition of ``plan``; if one refuses, every partition is put back as it was."""
    before = [(p, p.size) for p, _ in plan]
    try:
        for p, size in plan:
            p.resize(size)
    except Exception:
        for p, size in before:
            p.resize(size)
        raise
