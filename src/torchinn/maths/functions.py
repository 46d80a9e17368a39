"""Continuous weight functions: trainable control values, sampled anywhere by interpolation.

A :class:`ContinuousFunction` holds a tensor of control values. Some of its dimensions are
continuous (they run over a partition's control points in [0, 1]); the others are discrete
(kernel taps, heads, a network's input channels). Sampling evaluates the function at new points
along every continuous dimension, one dimension after the other (the interpolation is separable).

Interpolation (``kind``) is cubic convolution, ``"cubic"`` (Keys, a = -0.75: what
``grid_sample(mode="bicubic", align_corners=True)`` computes in the seed's Listing 1, with
``border`` padding) or ``"catmull-rom"`` (a = -1/2, which reproduces quadratics and is third-order
accurate, where a = -0.75 is first-order), or ``"linear"``. It is
written as a weighted sum of 4 (or 2) neighbouring control values per sampled point, so it costs
O(points x 4) per row instead of the dense O(points x controls) of an interpolation matrix, and
works for any number of continuous and discrete dimensions (``grid_sample`` is limited to 2-D
and 3-D images and has no bicubic mode in 3-D). Control points may be unevenly spaced
(Gauss-Legendre): a point's position between its two neighbouring control points is mapped
linearly to the index axis before interpolating.

>>> import torch
>>> from torchinn.maths.partition import Chunk
>>> f = ContinuousFunction(torch.tensor([0.0, 1.0, 4.0, 9.0]), dims=(0,))
>>> grid = torch.linspace(0, 1, 4)
>>> f.sample({0: [Chunk(grid.clone(), grid)]}).tolist()   # on the control grid: the control values
[0.0, 1.0, 4.0, 9.0]
>>> f.sample({0: [Chunk(torch.tensor([0.5]), grid)]}).tolist()
[2.125]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

if TYPE_CHECKING:  # partition.py samples with interpolation_taps, so it imports this module
    from .partition import Chunk

__all__ = ["ContinuousFunction", "interpolation_taps", "KINDS", "Kind"]

KINDS = ("cubic", "catmull-rom", "linear")
Kind = Literal["cubic", "catmull-rom", "linear"]
#: Keys' cubic convolution parameter: PyTorch's bicubic modes use -0.75, Catmull-Rom is -1/2.
_KEYS_A = {"cubic": -0.75, "catmull-rom": -0.5}


def _cubic_weights(f: Tensor, a: float) -> Tensor:
    """Keys' cubic convolution weights for taps at i-1, i, i+1, i+2 given the fraction ``f``."""

    def near(s: Tensor) -> Tensor:  # |s| <= 1
        return ((a + 2) * s - (a + 3)) * s * s + 1

    def far(s: Tensor) -> Tensor:  # 1 < |s| < 2
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a

    return torch.stack([far(1 + f), near(f), near(1 - f), far(2 - f)], dim=-1)


def interpolation_taps(points: Tensor, control: Tensor, kind: str = "cubic") -> tuple[Tensor, Tensor]:
    """Indices ``(k, T)`` into the ``m`` control values and their weights ``(k, T)`` for sampling
    at ``points``; ``T`` is 4 for cubic and 2 for linear. Differentiable in ``points``.

    Points outside ``[control[0], control[-1]]`` take the value at the nearest end.
    """
    m = control.numel()
    k = points.numel()
    if kind not in KINDS:
        raise ValueError(f"unknown interpolation kind {kind!r}; choose one of {KINDS}")
    taps = 4 if kind in _KEYS_A else 2
    if m == 1:
        idx = torch.zeros(k, taps, dtype=torch.long, device=points.device)
        w = torch.zeros(k, taps, dtype=points.dtype, device=points.device)
        w[:, 0] = 1
        return idx, w
    x = torch.clamp(points, float(control[0]), float(control[-1])) if control.device.type != "meta" else points
    j = torch.searchsorted(control.detach(), x.detach(), right=True) - 1
    j = j.clamp(0, m - 2)
    t = j.to(x.dtype) + (x - control[j]) / (control[j + 1] - control[j])
    i = torch.floor(t.detach()).long().clamp(0, m - 2)
    f = t - i.to(t.dtype)
    if kind in _KEYS_A:
        offsets = torch.arange(-1, 3, device=points.device)
        w = _cubic_weights(f, _KEYS_A[kind])
    else:
        offsets = torch.arange(0, 2, device=points.device)
        w = torch.stack([1 - f, f], dim=-1)
    idx = (i[:, None] + offsets).clamp(0, m - 1)
    return idx, w


class Taps(NamedTuple):
    """Sampled point ``i`` is ``sum_t w[i, t] * values[idx[i, t]]`` over ``n`` control values."""

    idx: Tensor
    w: Tensor
    n: int


def tap_sum(values: Tensor, taps: Taps) -> Tensor:
    """Rows of the 2-D ``values`` (one per control value) sampled with ``taps``: ``(k, columns)``.
    Differentiable in ``values`` and in the tap weights (the points).

    ``out[i] = sum_t w[i, t] * values[idx[i, t]]`` is exactly what ``embedding_bag``'s weighted
    sum computes, in one fused kernel with gradients for both the values and the weights.
    Measured 2-3x faster than an index_select + multiply + sum in a training step, which
    materialises a ``(k, taps, ...)`` tensor (benchmarks/overhead.py). Sampling the input
    channels of a 256x512x3x3 conv weight, moving them to the front, ``embedding_bag`` and moving
    them back took 3.1 ms of CPU, a per-tap gather-and-accumulate along the middle dimension 6.0
    ms and a dense interpolation matrix 52 ms; a custom backward gathering the transposed taps
    instead of scattering into zeros was no faster (and 3x slower for gradients to the points).
    A dim after the first with rows of at least ``MIDDLE_MIN_ROW`` and no gradient to the points
    goes to :func:`middle_tap_sum` instead, which moves nothing."""
    return F.embedding_bag(taps.idx, values, mode="sum", per_sample_weights=taps.w)


#: the shortest rows (the product of the dims after the sampled one: a 3x3 kernel's 9) for which
#: a dim after the first is sampled in place (:func:`middle_tap_sum`); shorter rows (a 1x1
#: conv, a linear layer) measured faster moved to the front
MIDDLE_MIN_ROW = 9


class _MiddleTapSum(torch.autograd.Function):
    """``embedding_bag`` over the rows of a ``(A * n, S)`` view, and its gradient as the same
    sum with the transposed taps (a gather into each row, no zero-filled scatter)."""

    @staticmethod
    def forward(ctx, rows: Tensor, idx: Tensor, w: Tensor, t_idx: Tensor, t_offsets: Tensor,
                t_w: Tensor) -> Tensor:
        ctx.save_for_backward(t_idx, t_offsets, t_w)
        return F.embedding_bag(idx, rows, mode="sum", per_sample_weights=w)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple:
        t_idx, t_offsets, t_w = ctx.saved_tensors
        g = F.embedding_bag(t_idx, grad.contiguous(), t_offsets, mode="sum", per_sample_weights=t_w)
        return g, None, None, None, None, None


def middle_tap_sum(values: Tensor, d: int, taps: Taps, memo: dict | None = None) -> Tensor:
    """``values`` sampled along dim ``d`` with ``taps`` (weights without a gradient), in place:
    for ``values`` of shape ``(A, n, S)`` around ``d``, bag ``(a, i)`` sums rows ``a * n + idx[i, t]``
    of the ``(A * n, S)`` view. The result comes out in ``values``' layout, so neither the
    values moved to the front nor the result moved back is copied (forward or backward);
    measured 2-3x faster than :func:`tap_sum` on a moved 3x3 conv weight, forward and backward.
    The index tensors (``A`` times the taps) are kept in ``memo`` for the pass."""
    shape = values.shape
    a, n, s = math.prod(shape[:d]), shape[d], math.prod(shape[d + 1:])
    k, t = taps.idx.shape
    key = ("middle", id(taps.idx), a)
    if memo is not None and key in memo:
        idx, t_idx, t_offsets, order = memo[key][0]
    else:
        base = torch.arange(a, device=values.device)
        idx = (taps.idx[None] + (base * n)[:, None, None]).reshape(a * k, t)
        flat = taps.idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=n)
        offsets = torch.cumsum(counts, 0) - counts
        t_idx = ((order // t)[None] + (base * k)[:, None]).reshape(-1)
        t_offsets = (offsets[None] + (base * (k * t))[:, None]).reshape(-1)
        if memo is not None:  # the taps' index tensor is kept alive with the entry: its id stays unique
            memo[key] = ((idx, t_idx, t_offsets, order), taps.idx)
    w = taps.w.expand(a, k, t).reshape(a * k, t)
    t_w = taps.w.reshape(-1)[order].expand(a, k * t).reshape(-1)
    out = _MiddleTapSum.apply(values.reshape(a * n, s), idx, w, t_idx, t_offsets, t_w)
    return out.reshape(*shape[:d], k, *shape[d + 1:])


class ContinuousFunction(nn.Module):
    """Control values of a function of the continuous dimensions ``dims`` of ``values``.

    Args:
        values: initial control values (copied into a trainable ``nn.Parameter``).
        dims: which dimensions of ``values`` are continuous.
        kind: ``"cubic"`` (default, the paper's choice), ``"catmull-rom"`` or ``"linear"``.
        copy: ``False`` takes ``values``' storage as the control values instead of a copy (the
            caller gives it away: a later write to one is a write to the other).
    """

    def __init__(self, values: Tensor, dims: Sequence[int],
                 kind: Kind = "cubic", *, copy: bool = True) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown interpolation kind {kind!r}; choose one of {KINDS}")
        dims = tuple(int(d) % values.ndim for d in dims) if values.ndim else ()
        if len(set(dims)) != len(dims):
            raise ValueError(f"continuous dims must be distinct, got {dims}")
        self.values = nn.Parameter(values.detach().clone() if copy else values.detach())
        self.dims = dims
        self.kind = kind

    def sample(self, grids: Mapping[int, Sequence[Chunk] | None], memo: dict | None = None,
               scales: Mapping[int, Tensor] | None = None) -> Tensor:
        """Evaluate on new points: ``grids[d]`` lists, for continuous dim ``d``, the chunks (points
        and control points) laid side by side along it; ``None`` or a missing dim keeps the
        control values. Gradients flow to the control values and to the points.

        ``memo``: a dict shared by the functions sampled on the same chunk objects in one pass,
        so that each chunk's interpolation taps are computed once (fewer small ops per step).

        ``scales[d]``: a vector the result is multiplied by along dim ``d`` (one value per sampled
        point: the quadrature of integrated channels), folded into the interpolation weights
        where ``d`` is sampled, so that it costs no pass over the tensor."""
        out = self.values
        scales = dict(scales or {})
        for d, chunks in grids.items():
            if chunks is None:
                continue
            if d not in self.dims:
                raise ValueError(f"dim {d} is not continuous; continuous dims are {self.dims}")
            out = self._sample_dim(out, d, chunks, memo, scales.pop(d, None))
        for d, scale in scales.items():
            out = out * scale.reshape([-1] + [1] * (out.ndim - d - 1))
        return out

    forward = sample

    def _sample_dim(self, values: Tensor, d: int, chunks: Sequence[Chunk], memo: dict | None,
                    scale: Tensor | None = None) -> Tensor:
        counts = [c.control.numel() for c in chunks]
        if sum(counts) != values.shape[d]:
            raise ValueError(
                f"dim {d} has {values.shape[d]} control values but the partition's chunks have "
                f"{counts} (sum {sum(counts)})"
            )
        if all(c.points is c.control for c in chunks):
            return values if scale is None else values * scale.reshape([-1] + [1] * (values.ndim - d - 1))
        taps = self._taps(chunks, values, memo, scale)
        if d > 0 and not taps.w.requires_grad and math.prod(values.shape[d + 1:]) >= MIDDLE_MIN_ROW:
            return middle_tap_sum(values.contiguous(), d, taps, memo)
        moved = values.movedim(d, 0)
        rest = moved.shape[1:]
        out = tap_sum(moved.reshape(values.shape[d], math.prod(rest)), taps)
        return out.reshape(taps.idx.shape[0], *rest).movedim(0, d)

    def _taps(self, chunks: Sequence[Chunk], values: Tensor, memo: dict | None, scale: Tensor | None) -> Taps:
        """The taps of all chunks side by side (row weights times ``scale``), once per pass."""
        whole = (tuple((id(c.points), id(c.control)) for c in chunks), self.kind, values.dtype,
                 None if scale is None else id(scale))
        if memo is not None and whole in memo:
            return memo[whole][0]
        idx_parts, w_parts, start = [], [], 0
        for c in chunks:
            if c.points.device != values.device:
                raise ValueError(
                    f"partition points are on {c.points.device} but the function's values are on "
                    f"{values.device}; move the model with .to(device)"
                )
            # kept with the chunk when it has a store (its points never change), else for this pass
            store, key = ((c.taps, (self.kind, values.dtype)) if c.taps is not None
                          else (memo, (id(c.points), id(c.control), self.kind, values.dtype)))
            if store is not None and key in store:
                idx, w = store[key][:2]
            else:
                idx, w = interpolation_taps(c.points, c.control, self.kind)
                w = w.to(values.dtype)
                if store is not None:  # the chunk is kept alive with its taps: its id stays unique
                    store[key] = (idx, w, None if store is c.taps else c)
            idx_parts.append(idx + start if start else idx)
            w_parts.append(w)
            start += c.control.numel()
        idx = torch.cat(idx_parts) if len(idx_parts) > 1 else idx_parts[0]
        w = torch.cat(w_parts) if len(w_parts) > 1 else w_parts[0]
        if scale is not None:  # the quadrature of integrated channels, folded into the taps
            w = w * scale.to(w.dtype)[:, None]
        taps = Taps(idx, w, start)
        if memo is not None:  # chunks and scale kept alive with the entry: their ids stay unique
            memo[whole] = (taps, tuple(chunks), scale)
        return taps

    def extra_repr(self) -> str:
        return f"shape={tuple(self.values.shape)}, dims={self.dims}, kind={self.kind!r}"
