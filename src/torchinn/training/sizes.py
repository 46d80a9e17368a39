"""Random sizes for training: :class:`RandomSizes` draws a new size for every resizable group of an
integral network at each training step (randomized discretization), from a generator the caller
controls.

It takes any integral network (:mod:`torchinn.model.protocol`: an :class:`~torchinn.IntegralModel`
from :func:`torchinn.convert` or :func:`torchinn.from_scratch`) or a mapping from name to
partition, and names the sizes it draws by group name. Finding and resizing groups:
:func:`torchinn.model.partitions` and :func:`torchinn.resize` (:mod:`torchinn.model.network`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Literal

import torch
from torch import nn

from ..model.network import integral_network
from ..options import check_choice
from ..maths.partition import Partition
from ..model.protocol import IntegralNetwork

__all__ = ["RandomSizes"]


class RandomSizes:
    """Draw a new size for every resizable partition of a model at each training step.

    The size of a partition with ``max_size`` n is drawn from ``[ceil(low * n), ceil(high * n)]``
    (``low``/``high`` are fractions), from a generator the caller controls:

    * ``"uniform"`` - every size in the range equally likely (the seed's Figure 1);
    * ``"full-biased"`` - sizes near the top of the range more likely (density grows linearly
      towards the full size), which keeps full-size accuracy while still teaching small sizes.

    ``model`` is any integral network (the sizes are named by its group names, as
    :func:`torchinn.model.partitions` names them) or a mapping from name to partition. ``ranges`` gives
    some groups (by name) their own ``(low, high)``. Every process that builds a
    ``RandomSizes`` with the same seed draws the same sizes (distributed training needs that).

    Call :meth:`step` before each forward pass; :meth:`full` restores the full sizes.
    :meth:`sandwich` gives the sizes of one step of the sandwich rule instead (the largest, the
    smallest and ``random`` drawn sizes, one forward/backward pass each; see
    :func:`torchinn.sandwich_backward`).

    >>> import torch, torchinn as inn
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> imodel = inn.from_scratch(net, torch.randn(2, 4))
    >>> sizes = RandomSizes(imodel, low=0.5, seed=0)
    >>> all(8 <= s <= 16 for s in sizes.step().values())
    True
    """

    def __init__(self, model: nn.Module | IntegralNetwork | Mapping[str, Partition], low: float = 0.5, high: float = 1.0,
                 distribution: Literal["uniform", "full-biased"] = "uniform", *,
                 ranges: Mapping[str, tuple[float, float]] | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None) -> None:
        for lo_, hi_ in [(low, high)] + list((ranges or {}).values()):
            if not 0.0 < lo_ <= hi_ <= 1.0:
                raise ValueError(f"need 0 < low <= high <= 1, got low={lo_}, high={hi_}")
        check_choice(distribution, ("uniform", "full-biased"), "distribution")
        if generator is not None and seed is not None:
            raise ValueError("give either a generator or a seed, not both")
        found = dict(model) if isinstance(model, Mapping) else integral_network(model).partition_map()
        self.partitions = {n: p for n, p in found.items() if p.resizable}
        if not self.partitions:
            raise ValueError("the model has no resizable partitions")
        unknown = sorted(set(ranges or {}) - set(self.partitions))
        if unknown:
            raise KeyError(f"ranges for unknown group(s) {unknown}; known groups: {sorted(self.partitions)[:10]}")
        self.ranges = dict(ranges or {})
        self.low, self.high, self.distribution = low, high, distribution
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(0 if seed is None else seed)
        self.generator = generator

    def bounds(self, p: Partition, name: str | None = None) -> tuple[int, int]:
        low, high = self.ranges.get(name, (self.low, self.high)) if name is not None else (self.low, self.high)
        lo = max(1, math.ceil(low * p.max_size - 1e-9))
        hi = max(lo, math.ceil(high * p.max_size - 1e-9))
        return lo, hi

    def draw(self, p: Partition, name: str | None = None) -> int:
        lo, hi = self.bounds(p, name)
        u = float(torch.rand((), generator=self.generator))
        if self.distribution == "full-biased":
            u = math.sqrt(u)  # density 2u on [0, 1]
        size = min(hi, lo + int(u * (hi - lo + 1)))
        return p.quadrature.nearest_size(size, lo, hi)

    def step(self) -> dict[str, int]:
        """Draw and set a new size for every partition (in a fixed order); returns them."""
        sizes = {}
        for name in sorted(self.partitions):
            p = self.partitions[name]
            sizes[name] = self.draw(p, name)
            p.resize(sizes[name])
        return sizes

    def largest(self) -> dict[str, int]:
        """Set every partition to the top of its range (``high``) and return the sizes."""
        return self._set(top=True)

    def smallest(self) -> dict[str, int]:
        """Set every partition to the bottom of its range (``low``) and return the sizes."""
        return self._set(top=False)

    def sandwich(self, random: int = 2) -> Iterator[dict[str, int]]:
        """The sizes of one step of the sandwich rule (universally slimmable networks, Yu & Huang
        2019): sets and yields the largest sizes, then the smallest, then ``random`` new draws
        (as :meth:`step`), ``2 + random`` in all. Run one forward/backward pass at each and
        step the optimizer once after the last; :func:`torchinn.sandwich_backward` does that.
        The partitions keep the last sizes: call :meth:`full` before evaluating at full size.

        >>> import torchinn as inn
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> imodel = inn.from_scratch(net, torch.randn(2, 4))
        >>> [s["0.weight:0"] for s in RandomSizes(imodel, low=0.5, seed=0).sandwich(2)][:2]
        [16, 8]
        """
        if isinstance(random, bool) or not isinstance(random, int) or random < 0:
            raise ValueError(f"random is the number of random sizes per sandwich step, an int >= 0, got {random!r}")
        yield self.largest()
        yield self.smallest()
        for _ in range(random):
            yield self.step()

    def _set(self, top: bool) -> dict[str, int]:
        sizes = {}
        for name in sorted(self.partitions):
            p = self.partitions[name]
            lo, hi = self.bounds(p, name)
            sizes[name] = p.quadrature.nearest_size(hi if top else lo, lo, hi)
            p.resize(sizes[name])
        return sizes

    def full(self) -> None:
        """Set every partition back to its full size."""
        for p in self.partitions.values():
            p.resize(p.max_size)

    def __iter__(self) -> Iterator[dict[str, int]]:
        while True:
            yield self.step()
