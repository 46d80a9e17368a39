"""Collections of partitions: find, resize and randomly resize all the partitions of a model.

:func:`partitions` lists the leaf partitions a model uses (each named by the first path it is
found at), :func:`resize` sets their sizes from one ratio or a mapping of sizes and ratios, and
:class:`RandomSizes` draws new sizes for every resizable partition at each training step
(randomized discretization), from a generator the caller controls. The partitions themselves
are in :mod:`torchinn.partition`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Literal

import torch
from torch import nn

from .partition import CompositePartition, Partition, _check_size

__all__ = [
    "RandomSizes",
    "partitions",
    "resize",
]


def partitions(model: nn.Module, *, resizable_only: bool = False) -> dict[str, Partition]:
    """The leaf partitions used in ``model``, each named by the first path it is found at."""
    found: dict[str, Partition] = {}
    seen: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, Partition) and not isinstance(module, CompositePartition):
            if id(module) in seen:
                continue
            seen.add(id(module))
            if resizable_only and not module.resizable:
                continue
            found[name] = module
    return found


def _target_size(ratio_or_size: float | int, max_size: int, what: str) -> int:
    if isinstance(ratio_or_size, float):
        if not 0.0 < ratio_or_size <= 1.0:
            raise ValueError(f"{what}: a ratio must be in (0, 1], got {ratio_or_size}")
        return max(1, round(ratio_or_size * max_size))
    return _check_size(ratio_or_size, max_size, what)


def resize(model: nn.Module, sizes: float | int | Mapping[str, float | int]) -> dict[str, int]:
    """Resize the partitions of ``model``: one ratio in (0, 1] for all (a float), or a mapping
    from partition name (see :func:`partitions`) to a size (int) or ratio (float).

    Returns the sizes set. A ratio gives the nearest size the partition's quadrature allows
    (:meth:`~torchinn.quadrature.Quadrature.nearest_size`: Simpson's rule rounds down to an odd size).
    """
    parts = partitions(model, resizable_only=True)
    if isinstance(sizes, Mapping):
        unknown = sorted(set(sizes) - set(parts))
        if unknown:
            raise KeyError(f"unknown partition(s) {unknown}; known: {sorted(parts)}")
        plan = dict(sizes)
    else:
        plan = {name: sizes for name in parts}
    done = {}
    for name, value in plan.items():
        p = parts[name]
        size = _target_size(value, p.max_size, f"partition {name!r}")
        if isinstance(value, float):  # a ratio: the nearest size the quadrature allows
            size = p.quadrature.nearest_size(size, high=p.max_size)
        p.resize(size)
        done[name] = size
    return done


class RandomSizes:
    """Draw a new size for every resizable partition of a model at each training step.

    The size of a partition with ``max_size`` n is drawn from ``[ceil(low * n), ceil(high * n)]``
    (``low``/``high`` are fractions), from a generator the caller controls:

    * ``"uniform"`` - every size in the range equally likely (the seed's Figure 1);
    * ``"full-biased"`` - sizes near the top of the range more likely (density grows linearly
      towards the full size), which keeps full-size accuracy while still teaching small sizes.

    ``ranges`` gives some partitions (by name) their own ``(low, high)``. With an
    :class:`~torchinn.IntegralModel` the names are its group names. Every process that builds a
    ``RandomSizes`` with the same seed draws the same sizes (distributed training needs that).

    Call :meth:`step` before each forward pass; :meth:`full` restores the full sizes.

    >>> import torch
    >>> from torchinn import IntegralLinear, UniformPartition
    >>> p = UniformPartition(16)
    >>> net = torch.nn.Sequential(IntegralLinear(4, p), IntegralLinear(p, 2))
    >>> sizes = RandomSizes(net, low=0.5, seed=0)
    >>> all(8 <= s <= 16 for s in sizes.step().values())
    True
    """

    def __init__(self, model: nn.Module | Mapping[str, Partition], low: float = 0.5, high: float = 1.0,
                 distribution: Literal["uniform", "full-biased"] = "uniform", *,
                 ranges: Mapping[str, tuple[float, float]] | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None) -> None:
        for lo_, hi_ in [(low, high)] + list((ranges or {}).values()):
            if not 0.0 < lo_ <= hi_ <= 1.0:
                raise ValueError(f"need 0 < low <= high <= 1, got low={lo_}, high={hi_}")
        if distribution not in ("uniform", "full-biased"):
            raise ValueError(f"distribution must be 'uniform' or 'full-biased', got {distribution!r}")
        if generator is not None and seed is not None:
            raise ValueError("give either a generator or a seed, not both")
        if isinstance(model, Mapping):
            found = dict(model)
        elif hasattr(model, "partition_map"):  # an IntegralModel: partitions by group name
            found = dict(model.partition_map())
        else:
            found = partitions(model)
        self.partitions = {n: p for n, p in found.items() if p.resizable}
        if not self.partitions:
            raise ValueError("the model has no resizable partitions")
        unknown = sorted(set(ranges or {}) - set(self.partitions))
        if unknown:
            raise KeyError(f"ranges for unknown partition(s) {unknown}; known: {sorted(self.partitions)[:10]}")
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

    def full(self) -> None:
        """Set every partition back to its full size."""
        for p in self.partitions.values():
            p.resize(p.max_size)

    def __iter__(self) -> Iterator[dict[str, int]]:
        while True:
            yield self.step()
