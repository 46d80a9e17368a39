"""Partitions whose points are learned: :class:`TrainablePartition` (grid tuning trains them).

>>> from torchinn.maths import UniformPartition
>>> t = TrainablePartition(UniformPartition(5).resize(3))
>>> t.points().detach()
tensor([0.0000, 0.5000, 1.0000])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functions import interpolation_taps
from .partition import CompositePartition, Device, Partition, _check_size
from .quadrature import GaussLegendre, Quadrature, check_points, get_quadrature

__all__ = ["TrainablePartition"]


class TrainablePartition(Partition):
    """A partition whose points are learned (the seed's Listing 3, generalised).

    The ``size + 1`` gaps between ``0``, the points, and ``1`` are ``delta**2`` normalised to sum
    to one, each raised to at least ``floor = max(eps, 2 * finfo(dtype).eps)`` (Listing 3 adds
    ``1e-8``): ``gap = floor + (1 - m * floor) * delta**2 / sum(delta**2)`` over the ``m`` free
    gaps. The scale of ``delta`` does not matter (no overflow), so the points stay strictly
    increasing inside [0, 1], in the working precision, whatever the optimizer does.
    A gap that starts at zero (the first point at 0 or the last at 1, as for the trapezoid rule)
    stays zero, and that point stays exactly 0 or 1: Listing 3 fixes the first point at 0 the
    same way.

    ``mix`` blends two ways of weighting the sampled channels: ``1`` (default) is the
    quadrature of the current points (the integral, as in the paper); ``0`` gives every point
    the full-size weight at its position, so that points on control nodes reproduce those
    channels unscaled: plain channel selection. Values in between interpolate linearly;
    ``train_mix=True`` makes it a trained parameter (kept in [0, 1]).

    >>> p = TrainablePartition(torch.tensor([0.0, 0.5, 1.0]), max_size=5, mix=0.0)
    >>> p.weights() / p.full_weights()[[0, 2, 4]]       # unit scales: channels 0, 2, 4 selected
    tensor([1., 1., 1.], grad_fn=<DivBackward0>)
    """

    def __init__(self, init: Partition | Tensor, quadrature: str | Quadrature | None = None,
                 max_size: int | None = None, eps: float = 1e-8, mix: float = 1.0,
                 train_mix: bool = False) -> None:
        if isinstance(init, Partition):
            if isinstance(init, CompositePartition):
                raise TypeError("make each sub-partition of a CompositePartition trainable instead")
            quadrature = quadrature or init.quadrature
            max_size = max_size or init.max_size
            init = init.points(dtype=torch.float64)
        quadrature = get_quadrature(quadrature or "trapezoid")
        if isinstance(quadrature, GaussLegendre):
            raise ValueError("a trainable partition cannot use the Gauss-Legendre rule: its weights "
                             "exist only at its own nodes; use trapezoid, simpson, midpoint, left or right")
        check_points(init, "initial partition")
        super().__init__(max_size if max_size is not None else init.numel(), quadrature)
        _check_size(init.numel(), self.max_size, "TrainablePartition")
        quadrature.check_size(init.numel())
        self.eps = eps
        gaps = torch.diff(init.detach().double(), prepend=init.new_zeros(1).double(),
                          append=init.new_ones(1).double())
        fixed = gaps <= 0
        # Invert gaps(): with sum(delta**2) = 1 the free gaps are floor + (1 - m*floor) * delta**2.
        dtype = torch.get_default_dtype()
        floor, m = self._floor(dtype, gaps.numel()), int((~fixed).sum())
        delta = torch.sqrt(torch.clamp((gaps - floor) / (1 - m * floor), min=0.0))
        self.delta = nn.Parameter(torch.where(fixed, 0.0, delta).to(dtype))
        self.register_buffer("_free", ~fixed, persistent=True)
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be a number in [0, 1] (1: quadrature weights, 0: selection), got {mix!r}")
        raw = torch.tensor(float(mix), dtype=dtype)
        if train_mix:
            self.mix_raw = nn.Parameter(raw)
        else:
            self.register_buffer("mix_raw", raw, persistent=True)

    @property
    def mix(self) -> Tensor:
        """The share of quadrature weighting in [0, 1] (straight-through clamp: the gradient
        always reaches the raw value, so a trained mix can come back from a bound)."""
        raw = self.mix_raw
        return raw + (raw.clamp(0.0, 1.0) - raw).detach()

    def weights(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        points = self.points(device, dtype)
        q = self.quadrature.weights(points, validate=False)
        if not self.mix_raw.requires_grad and float(self.mix_raw.detach()) >= 1.0:
            return q
        # the full-size weights at the points (linear between control nodes, exact on them)
        full = self.full_weights(points.device, points.dtype)
        idx, w = interpolation_taps(points, self.control_points(points.device, points.dtype), "linear")
        selected = (full[idx] * w).sum(-1)
        m = self.mix.to(points.dtype)
        return m * q + (1 - m) * selected

    def _floor(self, dtype: torch.dtype, n_gaps: int) -> float:
        """The smallest free gap: large enough that neighbouring points differ in ``dtype``."""
        return min(max(self.eps, 2 * torch.finfo(dtype).eps), 0.5 / n_gaps)

    @property
    def size(self) -> int:
        return self.delta.numel() - 1

    def gaps(self) -> Tensor:
        d, free = self.delta, self._free
        tiny = torch.finfo(d.dtype).tiny
        # delta / max|delta| keeps delta**2 finite; the normalised gaps do not depend on the scale.
        d = d / d.detach().abs().max().clamp_min(tiny)
        w = torch.where(free, d**2 + tiny, torch.zeros_like(d))
        floor = self._floor(d.dtype, d.numel())
        m = free.sum().to(d.dtype)
        return torch.where(free, floor + (1 - m * floor) * (w / w.sum()), torch.zeros_like(d))

    def points(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        c = torch.cumsum(self.gaps(), 0)
        # c[-1] is 1 up to rounding: dividing by it keeps every point <= 1, and a point followed
        # only by a fixed (zero) gap exactly 1.
        pts = c[:-1] / c[-1].detach()
        if device is not None and pts.device != torch.device(device):
            raise ValueError(
                f"trainable partition lives on {pts.device} but was asked for points on {device}; "
                "move the model with .to(device)"
            )
        return pts if dtype is None else pts.to(dtype)

    def cache_key(self) -> tuple:
        return (self.size, self.delta._version, self.delta.data_ptr(), self.mix_raw._version,
                self.mix_raw.data_ptr())

    def extra_repr(self) -> str:
        mix = float(self.mix.detach())
        return super().extra_repr() + (f", mix={mix:.3g}" if mix != 1.0 else "")
