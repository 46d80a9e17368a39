"""Sampling continuous tensors at the current sizes: one sampler and one cache for every module.

An :class:`~torchinn.IntegralModel` and an ``Integral*`` layer both keep their tensors as
:class:`~torchinn.maths.structured.StructuredFunction` objects and sample them with
:func:`sample_tensors` (the quadrature of integrated channels fused into the tensors, each
partition's points, weights and taps computed once per pass); both keep the result in a
:class:`SampleCache`, so evaluating twice at the same sizes samples once. There is no second
implementation to agree with.

>>> import torch
>>> from torchinn.maths import UniformPartition
>>> from torchinn.maths.structured import Atom, StructuredFunction
>>> p = UniformPartition(4)
>>> fn = StructuredFunction(torch.ones(3, 4), (((Atom(3),),), ((Atom(4, "in", integrate=True),),)),
...                         {"in": p.full_weights()})
>>> torch.allclose(sample_tensors({"w": fn}, {"in": p})["w"], torch.ones(3, 4))   # full size: back
True
>>> p.resize(2)
UniformPartition(size=2, max_size=4, quadrature='trapezoid')
>>> sample_tensors({"w": fn}, {"in": p})["w"].shape
torch.Size([3, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .functions import interpolation_taps
from .partition import Partition
from .structured import StructuredFunction

__all__ = ["SampleCache", "ratio_vector", "sample_tensors"]

T = TypeVar("T")


def sample_tensors(functions: Mapping[str, StructuredFunction], partitions: Mapping[str, Partition],
                   memo: dict | None = None) -> dict[str, Tensor]:
    """Every function sampled on ``partitions`` (group name -> partition), quadrature fused where
    integrated. ``memo`` is shared by all of them (and may be passed in to share it further)."""
    memo = {} if memo is None else memo
    return {name: fn.sample(partitions, memo) for name, fn in functions.items()}


def ratio_vector(p: Partition, like: Tensor) -> Tensor:
    """Current quadrature weights over the full-size ones (interpolated): 1 at full size."""
    if p.is_standard:
        return torch.ones(p.size, dtype=like.dtype, device=like.device)
    points = p.points(like.device, like.dtype)
    inv_full = 1.0 / p.full_weights(like.device, like.dtype)
    idx, w = interpolation_taps(points, p.control_points(like.device, like.dtype), "linear")
    return p.weights(like.device, like.dtype) * (inv_full[idx] * w).sum(-1)


class SampleCache:
    """What a module sampled at the current sizes, kept in eval mode while nothing needs a
    gradient, until a partition, a partition's type or a parameter changes (an optimizer step
    bumps the parameter's version). A copy or a pickle of the module starts empty."""

    def __init__(self) -> None:
        self._entry: tuple[tuple, Any] | None = None

    @property
    def value(self) -> Any:
        """The cached result (``None``: nothing cached)."""
        return None if self._entry is None else self._entry[1]

    def clear(self) -> None:
        self._entry = None

    def get(self, module: nn.Module, partitions: Iterable[Partition], sample: Callable[[], T]) -> T:
        """``sample()``, or what it returned last time if ``module`` and ``partitions`` have not
        changed since and caching is allowed (``module`` in eval mode, and no gradient needed)."""
        params = list(module.parameters())
        if module.training or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            self._entry = None
            return sample()
        parts = list(partitions)
        key = (tuple(p.cache_key() for p in parts), tuple(type(p) for p in parts),
               tuple((t.data_ptr(), t._version) for t in params))
        if self._entry is None or self._entry[0] != key:
            self._entry = None  # the old samples are freed before the new ones are made
            self._entry = (key, sample())
        return self._entry[1]

    def __reduce__(self) -> tuple:
        return (SampleCache, ())

    def __repr__(self) -> str:
        return f"SampleCache({'empty' if self._entry is None else 'filled'})"
