"""Numerical quadratures on partitions of [0, 1].

A quadrature turns the values of a function at the points of a partition into an approximation
of its integral over [0, 1]: ``integral ≈ sum_i q_i f(x_i)``. The weights ``q`` depend only on the
points, so an integral layer fuses them into its sampled weight tensor (the Neural Integral
Lemma, Appendix A of the paper).

Each rule also names its *standard nodes* for ``n`` points: where a partition of ``n`` points
sits before any tuning. For the trapezoid and Simpson rules these are ``linspace(0, 1, n)``; the
Riemann and midpoint rules use the left ends, right ends or centres of ``n`` equal cells, so
that no point gets a zero weight; Gauss-Legendre uses its own nodes.

>>> import torch
>>> rule = get_quadrature("trapezoid")
>>> rule.weights(torch.tensor([0.0, 0.25, 1.0]))
tensor([0.1250, 0.5000, 0.3750])
>>> round(float(integrate(lambda x: x**2, rule.nodes(101), "simpson")), 6)
0.333333
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Quadrature",
    "LeftRiemann",
    "RightRiemann",
    "Midpoint",
    "Trapezoid",
    "Simpson",
    "GaussLegendre",
    "QUADRATURES",
    "register_quadrature",
    "get_quadrature",
    "check_points",
    "integrate",
]


def check_points(points: Tensor, what: str = "partition") -> None:
    """Raise ``ValueError`` unless ``points`` is a 1-D, finite, strictly increasing tensor in [0, 1]."""
    if not isinstance(points, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(points).__name__}")
    if points.ndim != 1 or points.numel() == 0:
        raise ValueError(f"{what} must be a non-empty 1-D tensor, got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"{what} must have a floating dtype, got {points.dtype}")
    if points.device.type == "meta":
        return
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"{what} has non-finite values: {points.tolist()}")
    lo, hi = float(points.min()), float(points.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{what} leaves [0, 1]: its points span [{lo:.6g}, {hi:.6g}]")
    if points.numel() > 1:
        steps = points[1:] - points[:-1]
        bad = torch.nonzero(steps <= 0)
        if bad.numel():
            i = int(bad[0, 0])
            raise ValueError(
                f"{what} must be strictly increasing, but point {i + 1} ({float(points[i + 1]):.6g})"
                f" <= point {i} ({float(points[i]):.6g})"
            )


class Quadrature(ABC):
    """A quadrature rule: weights for any valid partition of [0, 1], and standard nodes."""

    name: str = ""
    #: Degree of the polynomials integrated exactly on the rule's standard nodes.
    exact_degree: int = 0

    def check_size(self, n: int) -> None:
        """Raise ``ValueError`` unless ``n`` points are allowed by this rule."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{self.name} rule needs a point count >= 1, got {n!r}")

    def allows(self, n: int) -> bool:
        """Whether this rule takes ``n >= 1`` points (every count, unless a rule says otherwise)."""
        return True

    def nearest_size(self, size: int, low: int = 1, high: int | None = None) -> int:
        """The point count this rule allows nearest to ``size``, within ``[low, high]`` if possible.

        ``size`` itself if allowed, else the next smaller allowed count if it is ``>= low``, else
        the next larger one if it is ``<= high``, else the next smaller one (outside the range).

        >>> get_quadrature("simpson").nearest_size(8), get_quadrature("simpson").nearest_size(8, low=8, high=9)
        (7, 9)
        >>> get_quadrature("trapezoid").nearest_size(8)
        8
        """
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{self.name} rule: size must be an int >= 1, got {size!r}")
        if self.allows(size):
            return size
        down = next((n for n in range(size - 1, 0, -1) if self.allows(n)), None)
        if down is not None and down >= low:
            return down
        up = next((n for n in range(size + 1, high + 1) if self.allows(n)), None) if high is not None else None
        if up is not None:
            return up
        if down is None:
            raise ValueError(f"{self.name} rule allows no point count in [1, {size}] nor in [{size}, {high}]")
        return down

    def nodes(self, n: int, *, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> Tensor:
        """The rule's standard partition of ``n`` points in [0, 1]."""
        self.check_size(n)
        dtype = dtype or torch.get_default_dtype()
        return torch.tensor(self._nodes(n), device=device, dtype=dtype)

    def weights(self, points: Tensor, *, validate: bool = True) -> Tensor:
        """Quadrature weights ``q`` (same device and dtype as ``points``) so that
        ``sum(q * f(points))`` approximates the integral of ``f`` over [0, 1]."""
        if validate:
            check_points(points)
            self.check_size(points.numel())
        return self._weights(points)

    @abstractmethod
    def _nodes(self, n: int) -> list[float]: ...

    @abstractmethod
    def _weights(self, points: Tensor) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _pad(points: Tensor, left: float | None, right: float | None) -> Tensor:
    parts = []
    if left is not None:
        parts.append(points.new_full((1,), left))
    parts.append(points)
    if right is not None:
        parts.append(points.new_full((1,), right))
    return torch.cat(parts)


class LeftRiemann(Quadrature):
    """Left Riemann sum: ``q_i = x_{i+1} - x_i`` with ``x_n = 1`` (the seed's Appendix B when the
    last point is 1, which then gets weight 0). If the first point is above 0, it also stands for
    ``[0, x_0]``, so the rule still integrates over all of [0, 1]. Standard nodes: ``i / n``."""

    name = "left"
    exact_degree = 0

    def _nodes(self, n: int) -> list[float]:
        return [i / n for i in range(n)]

    def _weights(self, points: Tensor) -> Tensor:
        q = torch.diff(_pad(points, None, 1.0))
        return q + torch.cat([points[:1], torch.zeros_like(points[1:])])


class RightRiemann(Quadrature):
    """Right Riemann sum: ``q_i = x_i - x_{i-1}`` with ``x_{-1} = 0``. If the last point is below
    1, it also stands for ``[x_last, 1]``, so the rule still integrates over all of [0, 1].
    Standard nodes: ``(i+1)/n``."""

    name = "right"
    exact_degree = 0

    def _nodes(self, n: int) -> list[float]:
        return [(i + 1) / n for i in range(n)]

    def _weights(self, points: Tensor) -> Tensor:
        q = torch.diff(_pad(points, 0.0, None))
        return q + torch.cat([torch.zeros_like(points[:-1]), 1.0 - points[-1:]])


class Midpoint(Quadrature):
    """Midpoint rule: each point stands for the cell between the midpoints to its neighbours
    (cells end at 0 and 1). Standard nodes ``(i + 1/2) / n``, where it is exact for degree 1."""

    name = "midpoint"
    exact_degree = 1

    def _nodes(self, n: int) -> list[float]:
        return [(i + 0.5) / n for i in range(n)]

    def _weights(self, points: Tensor) -> Tensor:
        inner = 0.5 * (points[1:] + points[:-1])
        return torch.diff(_pad(inner, 0.0, 1.0))


def _extend_ends(points: Tensor, q: Tensor) -> Tensor:
    """Add the pieces [0, x_0] and [x_last, 1] with the function held constant, so every rule
    integrates over all of [0, 1] (nothing changes when the partition spans [0, 1])."""
    ends = torch.zeros_like(q)
    ends[0] = points[0]
    ends[-1] = ends[-1] + (1.0 - points[-1])
    return q + ends


class Trapezoid(Quadrature):
    """Trapezoid rule (the seed's Appendix B): half weights at the ends. Standard nodes
    ``linspace(0, 1, n)`` (one point: ``[0.5]``). Exact for degree 1 on any partition of [0, 1]."""

    name = "trapezoid"
    exact_degree = 1

    def _nodes(self, n: int) -> list[float]:
        return [0.5] if n == 1 else [i / (n - 1) for i in range(n)]

    def _weights(self, points: Tensor) -> Tensor:
        if points.numel() == 1:
            return torch.ones_like(points)
        dx = torch.diff(points)
        q = torch.zeros_like(points)
        q[:-1] = q[:-1] + 0.5 * dx
        q[1:] = q[1:] + 0.5 * dx
        return _extend_ends(points, q)


class Simpson(Quadrature):
    """Composite Simpson rule on panels of two cells; needs an odd number of points.

    On uniform panels it is the classic 1-4-1 rule, exact for degree 3. On non-uniform panels each
    panel integrates the quadratic through its three points (exact for degree 2), so tuned,
    non-uniform partitions still work. Standard nodes ``linspace(0, 1, n)``.
    """

    name = "simpson"
    exact_degree = 3

    def allows(self, n: int) -> bool:
        return n % 2 == 1

    def check_size(self, n: int) -> None:
        super().check_size(n)
        if not self.allows(n):
            raise ValueError(
                f"Simpson's rule needs an odd number of points (1, 3, 5, ...), got {n}; "
                "use an odd size or another quadrature"
            )

    def _nodes(self, n: int) -> list[float]:
        return [0.5] if n == 1 else [i / (n - 1) for i in range(n)]

    def _weights(self, points: Tensor) -> Tensor:
        if points.numel() == 1:
            return torch.ones_like(points)
        h0 = points[1:-1:2] - points[0:-2:2]
        h1 = points[2::2] - points[1:-1:2]
        s = h0 + h1
        w_left = s / 6 * (2 - h1 / h0)
        w_mid = s**3 / (6 * h0 * h1)
        w_right = s / 6 * (2 - h0 / h1)
        q = torch.zeros_like(points)
        q[0:-2:2] = q[0:-2:2] + w_left
        q[1:-1:2] = q[1:-1:2] + w_mid
        q[2::2] = q[2::2] + w_right
        return _extend_ends(points, q)


@lru_cache(maxsize=256)
def _gauss_legendre(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    t, w = np.polynomial.legendre.leggauss(n)
    return tuple(((t + 1) / 2).tolist()), tuple((w / 2).tolist())


class GaussLegendre(Quadrature):
    """Gauss-Legendre rule on [0, 1]: ``n`` points, exact for degree ``2n - 1``.

    It is defined only on its own nodes: :meth:`weights` raises for any other partition (a
    trainable partition cannot use it)."""

    name = "gauss-legendre"
    exact_degree = -1  # depends on n: 2n - 1

    def _nodes(self, n: int) -> list[float]:
        return list(_gauss_legendre(n)[0])

    def _weights(self, points: Tensor) -> Tensor:
        n = points.numel()
        nodes, w = _gauss_legendre(n)
        ref = torch.tensor(nodes, dtype=torch.float64)
        if points.device.type != "meta":
            err = float((points.detach().double().cpu() - ref).abs().max())
            tol = 1e3 * torch.finfo(points.dtype).eps
            if err > tol:
                raise ValueError(
                    f"Gauss-Legendre weights exist only at its own {n} nodes, but the partition "
                    f"differs from them by up to {err:.3g} (> {tol:.3g}); use GaussLegendre().nodes({n})"
                )
        return torch.tensor(w, dtype=points.dtype, device=points.device)


QUADRATURES: dict[str, type[Quadrature]] = {}


def register_quadrature(cls: type[Quadrature]) -> type[Quadrature]:
    """Class decorator: make a :class:`Quadrature` available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    QUADRATURES[cls.name] = cls
    return cls


for _cls in (LeftRiemann, RightRiemann, Midpoint, Trapezoid, Simpson, GaussLegendre):
    register_quadrature(_cls)


def get_quadrature(rule: str | Quadrature) -> Quadrature:
    """A quadrature by name (``"left"``, ``"right"``, ``"midpoint"``, ``"trapezoid"``,
    ``"simpson"``, ``"gauss-legendre"``) or the instance itself."""
    if isinstance(rule, Quadrature):
        return rule
    if isinstance(rule, str) and rule in QUADRATURES:
        return QUADRATURES[rule]()
    raise ValueError(f"unknown quadrature {rule!r}; choose one of {sorted(QUADRATURES)}")


def integrate(f: Callable[[Tensor], Tensor] | Tensor, points: Tensor,
              rule: str | Quadrature = "trapezoid") -> Tensor:
    """Approximate the integral over [0, 1] of ``f`` sampled at ``points``.

    ``f`` is a callable evaluated at ``points`` or a tensor of values whose *first* dimension runs
    over the points (further dimensions are integrated independently).
    """
    q = get_quadrature(rule).weights(points)
    values = f(points) if callable(f) else f
    if values.shape[:1] != points.shape:
        raise ValueError(
            f"f has {values.shape[0] if values.ndim else 0} values along dim 0 but the partition "
            f"has {points.numel()} points"
        )
    return torch.tensordot(q.to(values.dtype), values, dims=([0], [0]))

