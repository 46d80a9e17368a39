"""Partitions of [0, 1]: the points where a group's continuous functions are sampled.

A partition belongs to a channel *group*: every weight dimension in the group is sampled on the
same points, so one call resizes every layer that shares it. Its ``max_size`` is the number of
control values of those functions; its ``size`` is how many channels it currently gives.

* :class:`UniformPartition` - the quadrature's standard nodes (equally spaced, or the Gauss-Legendre
  nodes), resizable to any size in ``[1, max_size]``;
* :class:`FixedPartition` - points given by the user;
* :class:`~torchinn.maths.trainable.TrainablePartition` - the seed's Listing 3: positions learned
  by gradient descent (:mod:`torchinn.maths.trainable`);
* :class:`CompositePartition` - several partitions side by side (concatenated channels).

The partitions of a whole model are listed, resized and randomly resized (for training with
randomized discretization) by :mod:`torchinn.training.sizes`.

>>> p = UniformPartition(8, "trapezoid")
>>> p.resize(5).points()
tensor([0.0000, 0.2500, 0.5000, 0.7500, 1.0000])
>>> p.weights()
tensor([0.1250, 0.2500, 0.2500, 0.2500, 0.1250])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .quadrature import GaussLegendre, Quadrature, check_points, get_quadrature

__all__ = [
    "Chunk",
    "Partition",
    "UniformPartition",
    "GaussLegendrePartition",
    "FixedPartition",
    "CompositePartition",
]

Device = torch.device | str | None


#: at most this many entries (a size's points, weights, chunks; one per device and dtype) are kept
#: by a :class:`UniformPartition`
CACHE_ENTRIES = 64


class Chunk(NamedTuple):
    """One continuous segment of a partition: where to sample, and where the control values sit.

    ``taps``: where the interpolation taps on these points may be kept from one pass to the next
    (``None``: recomputed in every pass). A partition gives one only for points that never change
    and need no gradient (the standard nodes of a size), with the chunk object itself kept."""

    points: Tensor
    control: Tensor
    taps: dict | None = None


def _check_size(size: object, max_size: int, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        if isinstance(size, Tensor) and size.numel() == 1 and not size.is_floating_point():
            size = int(size)
        else:
            raise TypeError(f"{what}: size must be an int, got {type(size).__name__} {size!r}")
    if not 1 <= size <= max_size:
        raise ValueError(f"{what} has {max_size} channels; size must be in [1, {max_size}], got {size}")
    return size


class Partition(nn.Module):
    """Base class. Subclasses give :meth:`points`; the quadrature gives the weights."""

    def __init__(self, max_size: int, quadrature: str | Quadrature = "trapezoid") -> None:
        super().__init__()
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be an int >= 1, got {max_size!r}")
        self.max_size = max_size
        self.quadrature = get_quadrature(quadrature)
        self.quadrature.check_size(max_size)

    # -- what subclasses provide ------------------------------------------------------------
    @property
    def size(self) -> int:
        raise NotImplementedError

    def points(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        """The current points, strictly increasing in [0, 1]."""
        raise NotImplementedError

    def cache_key(self) -> tuple:
        """Changes whenever :meth:`points` would change (used by layers' eval-mode caches)."""
        raise NotImplementedError

    def points_key(self) -> tuple:
        """Changes whenever :meth:`points` would change, not when only the weights do.

        What a sample before its quadrature weights depends on; :meth:`cache_key` (the default
        here) may also follow the weights, as :class:`~torchinn.elastic.scaled.ScaledPartition`'s does."""
        return self.cache_key()

    @property
    def is_standard(self) -> bool:
        """True when :meth:`points` are exactly the control points (sampling is the identity)."""
        return False

    # -- shared -------------------------------------------------------------------------
    @property
    def resizable(self) -> bool:
        return False

    def weights(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        """Quadrature weights for :meth:`points`; they sum to 1."""
        return self.quadrature.weights(self.points(device, dtype), validate=False)

    def control_points(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        """Where the control values of functions on this partition sit: the standard nodes of
        ``max_size`` points, so that the full-size standard partition samples them exactly."""
        return self.quadrature.nodes(self.max_size, device=device, dtype=dtype)

    def full_weights(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        """Quadrature weights at the control points (the full-size standard partition)."""
        return self.quadrature.weights(self.control_points(device, dtype), validate=False)

    def chunks(self, device: Device = None, dtype: torch.dtype | None = None) -> list[Chunk]:
        """The continuous segments along this partition (one, except for composites). When the
        points are the control points, both fields hold the same tensor (sampling is skipped)."""
        points = self.points(device, dtype)
        if self.is_standard:
            return [Chunk(points, points)]
        return [Chunk(points, self.control_points(device, dtype))]

    def chunk_sizes(self) -> list[tuple[int, int]]:
        """``(size, max_size)`` of every chunk."""
        return [(self.size, self.max_size)]

    def leaves(self) -> list[Partition]:
        """The partitions this one is made of (itself, except for composites)."""
        return [self]

    def extra_repr(self) -> str:
        return f"size={self.size}, max_size={self.max_size}, quadrature={self.quadrature.name!r}"


class UniformPartition(Partition):
    """The quadrature's standard nodes for the current size; resizable in ``[1, max_size]``.

    The points are equally spaced for every rule except Gauss-Legendre, which uses its own nodes.
    """

    def __init__(self, max_size: int, quadrature: str | Quadrature = "trapezoid",
                 size: int | None = None) -> None:
        super().__init__(max_size, quadrature)
        self._size = max_size
        self._cache: dict[tuple, Tensor] = {}
        if size is not None:
            self.resize(size)

    @property
    def size(self) -> int:
        return self._size

    @property
    def resizable(self) -> bool:
        return True

    def resize(self, size: int) -> UniformPartition:
        """Set the number of points; returns ``self``."""
        size = _check_size(size, self.max_size, f"{type(self).__name__}")
        self.quadrature.check_size(size)
        self._size = size
        return self

    @property
    def is_standard(self) -> bool:
        return self._size == self.max_size

    def points(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or torch.get_default_dtype()
        key = (self._size, str(torch.device(device or "cpu")), dtype)
        out = self._cache.get(key)
        if out is None:
            out = self._keep(key, self.quadrature.nodes(self._size, device=device, dtype=dtype))
        return out

    def weights(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or torch.get_default_dtype()
        key = ("q", self._size, str(torch.device(device or "cpu")), dtype)
        out = self._cache.get(key)
        if out is None:
            out = self._keep(key, super().weights(device, dtype))
        return out

    def control_points(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or torch.get_default_dtype()
        key = ("c", self.max_size, str(torch.device(device or "cpu")), dtype)
        out = self._cache.get(key)
        if out is None:
            out = self._keep(key, super().control_points(device, dtype))
        return out

    def _keep(self, key: tuple, value: Any) -> Any:
        """``value`` kept under ``key``; the store is emptied first when it holds
        :data:`CACHE_ENTRIES` (training with random sizes would otherwise keep the points, weights
        and interpolation taps of every size ever drawn: for a group of n channels, O(n^2))."""
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = value
        return value

    def chunks(self, device: Device = None, dtype: torch.dtype | None = None) -> list[Chunk]:
        """The chunks of :meth:`Partition.chunks`, one object per size, device and dtype.

        Each carries a store for its interpolation taps (the standard nodes of a size never
        change), so that a training step does not recompute them."""
        dtype = dtype or torch.get_default_dtype()
        key = ("chunks", self._size, str(torch.device(device or "cpu")), dtype)
        out = self._cache.get(key)
        if out is None:
            points = self.points(device, dtype)
            control = points if self.is_standard else self.control_points(device, dtype)
            out = self._keep(key, [Chunk(points, control, {})])
        return list(out)

    def cache_key(self) -> tuple:
        return (self._size,)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state


class GaussLegendrePartition(UniformPartition):
    """Gauss-Legendre nodes of the current size (the quadrature is Gauss-Legendre)."""

    def __init__(self, max_size: int, size: int | None = None) -> None:
        super().__init__(max_size, GaussLegendre(), size)


class FixedPartition(Partition):
    """User-given points (strictly increasing, in [0, 1]); not resizable.

    ``max_size`` is the number of control values of the functions sampled on it (default: as many
    as there are points).
    """

    def __init__(self, points: Tensor | Iterable[float], quadrature: str | Quadrature = "trapezoid",
                 max_size: int | None = None) -> None:
        pts = points if isinstance(points, Tensor) else torch.tensor(list(points), dtype=torch.float64)
        check_points(pts)
        super().__init__(max_size if max_size is not None else pts.numel(), quadrature)
        _check_size(pts.numel(), self.max_size, "FixedPartition")
        self.quadrature.weights(pts)  # raises if the rule cannot use these points
        self.register_buffer("_points", pts.detach().clone(), persistent=True)

    @property
    def size(self) -> int:
        return self._points.numel()

    def points(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        return self._points.to(device=device or self._points.device, dtype=dtype or torch.get_default_dtype())

    def cache_key(self) -> tuple:
        return (self.size, self._points._version)


class CompositePartition(Partition):
    """Partitions laid side by side, for concatenated channels: each part keeps its own continuous
    functions (no interpolation across a seam); part ``i`` covers a share of [0, 1] proportional
    to its ``max_size``."""

    def __init__(self, parts: Iterable[Partition]) -> None:
        parts = list(parts)
        if not parts:
            raise ValueError("CompositePartition needs at least one part")
        for p in parts:
            if not isinstance(p, Partition):
                raise TypeError(f"CompositePartition parts must be Partitions, got {type(p).__name__}")
        total = sum(p.max_size for p in parts)
        super().__init__(total, parts[0].quadrature)
        self.parts = nn.ModuleList(parts)

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    def _shares(self) -> list[float]:
        return [p.max_size / self.max_size for p in self.parts]

    def points(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        out, start = [], 0.0
        for p, share in zip(self.parts, self._shares()):
            out.append(start + share * p.points(device, dtype))
            start += share
        return torch.cat(out)

    def weights(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        return torch.cat([share * p.weights(device, dtype) for p, share in zip(self.parts, self._shares())])

    def control_points(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        raise TypeError("a CompositePartition has no single control grid; use chunks()")

    def full_weights(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        return torch.cat([share * p.full_weights(device, dtype)
                          for p, share in zip(self.parts, self._shares())])

    def chunks(self, device: Device = None, dtype: torch.dtype | None = None) -> list[Chunk]:
        return [c for p in self.parts for c in p.chunks(device, dtype)]

    def chunk_sizes(self) -> list[tuple[int, int]]:
        return [s for p in self.parts for s in p.chunk_sizes()]

    def leaves(self) -> list[Partition]:
        return [leaf for p in self.parts for leaf in p.leaves()]

    def cache_key(self) -> tuple:
        return tuple(p.cache_key() for p in self.parts)

    def points_key(self) -> tuple:
        return tuple((type(p), p.points_key()) for p in self.parts)

    @property
    def is_standard(self) -> bool:
        return all(p.is_standard for p in self.parts)

    def extra_repr(self) -> str:
        return f"size={self.size}, max_size={self.max_size}"
