"""The rows of one layer's least-squares refit (:mod:`torchinn.compression.refit`), built and accumulated chunk
by chunk so that the memory they take is bounded whatever the layer and the batch.

A linear layer's rows are its input vectors; a convolution's are its input patches at output
positions, one row per sample and position (the columns of ``F.unfold``). Unfolding a whole batch
first would take ``channels x taps`` times the input: 2 GB for a 1-d convolution of 512 channels
and 64 taps on 8 signals of 2,048 samples, 12 GB for a 3x3 convolution of 1,024 channels on 8 maps
of 64x64, most of it dropped again when only a sample of positions is kept. Here the patches are
gathered from the padded input at the kept positions only, at most ``chunk`` values at a time, and
added to the float64 normal equations (:mod:`torchinn.compression.ridge`) before the next chunk is gathered: a
chunk takes about :data:`BYTES_PER_VALUE` bytes per value (the gathered patches, their float64
rows and the targets), 48 MiB at the default ``chunk`` of 2^22 values.

>>> import torch
>>> from torchinn.compression.ridge import NormalEquations
>>> layer = Layer("conv", "w", None, True, stride=(1,), padding=(1,), dilation=(1,))
>>> x, w = torch.randn(2, 3, 10, dtype=torch.float64), torch.randn(4, 3, 3, dtype=torch.float64)
>>> y = torch.nn.functional.conv1d(x, w, padding=1)
>>> eqs = NormalEquations()
>>> for xs, ys in row_chunks(layer, x, y, w, None, None, bias=False, chunk=30):
...     eqs.add(xs, ys)
>>> eqs.rows, torch.allclose(eqs.solve(1e-12, current(layer, w, None)), current(layer, w, None))
(20, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Layer", "row_chunks", "sample", "current", "store", "in_channels", "features"]

#: bytes held per value of a chunk of rows: the gathered patches in the layer's dtype (at most 4
#: bytes here; 8 for a float64 model), their float64 rows and a share for the targets
BYTES_PER_VALUE = 12
#: default values (rows x features, all groups) in one chunk of rows
CHUNK = 1 << 22


@dataclass
class Layer:
    """One refittable layer: its node name, its weight and bias attributes, how to unfold."""

    node: str
    weight: str
    bias: str | None
    conv: bool
    transposed: bool = False       # (mm family) the stored weight is (in, out)
    stride: tuple[int, ...] = ()
    padding: Any = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1


def features(layer: Layer, w: Tensor) -> int:
    """Columns of the regression per group, without the bias column."""
    return w[0].numel() if layer.conv else w.shape[0 if layer.transposed else 1]


def in_channels(layer: Layer, w: Tensor) -> int:
    if layer.conv:
        return w.shape[1] * layer.groups
    return w.shape[0] if layer.transposed else w.shape[1]


def spatial_size(layer: Layer, y: Tensor) -> tuple[int, int]:
    """(samples, output positions per sample) of a convolution's output ``y``."""
    yb = y if y.ndim == len(layer.stride) + 2 else y.unsqueeze(0)
    return yb.shape[0], math.prod(yb.shape[2:])


def _padded(layer: Layer, x: Tensor, w: Tensor) -> tuple[Tensor, tuple[int, ...], tuple[int, ...],
                                                          tuple[int, ...], int]:
    """The input padded as the convolution pads it, as 2-d maps (N, C, H, W), with the kernel,
    stride and dilation in 2-d and the output width."""
    k = w.ndim - 2
    if x.ndim == k + 1:  # unbatched
        x = x.unsqueeze(0)
    kernel, stride, dilation = tuple(w.shape[2:]), layer.stride, layer.dilation
    if layer.padding == "valid":
        pads = [0] * (2 * k)
    elif layer.padding == "same":  # as torch: any odd extra on the right
        pads = []
        for i in reversed(range(k)):  # F.pad wants the last dimension first
            total = dilation[i] * (kernel[i] - 1)
            pads += [total // 2, total - total // 2]
    else:
        pads = [p for p in reversed(layer.padding) for _ in (0, 1)]
    if any(pads):
        x = F.pad(x, pads)
    if k == 1:
        x, kernel, stride, dilation = x.unsqueeze(2), (1,) + kernel, (1,) + stride, (1,) + dilation
    out_w = (x.shape[-1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return x, kernel, stride, dilation, out_w


def _patches(xp: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
             out_w: int, positions: Tensor) -> Tensor:
    """``F.unfold(xp, ...)[:, :, positions]``, (N, C x kh x kw, P), without unfolding the rest."""
    dev = xp.device
    r, c = positions // out_w, positions % out_w
    ki = torch.arange(kernel[0], device=dev) * dilation[0]
    kj = torch.arange(kernel[1], device=dev) * dilation[1]
    rows = r[None, None, :] * stride[0] + ki[:, None, None]       # (kh, 1, P)
    cols = c[None, None, :] * stride[1] + kj[None, :, None]       # (1, kw, P)
    idx = (rows * xp.shape[-1] + cols).reshape(-1)                 # (kh x kw x P), unfold's order
    n, ch = xp.shape[:2]
    return xp.flatten(2).index_select(2, idx).reshape(n, ch * kernel[0] * kernel[1], positions.numel())


def _conv_targets(layer: Layer, y: Tensor, kept: Tensor | None, positions: Tensor) -> Tensor:
    if y.ndim == len(layer.stride) + 1:  # unbatched
        y = y.unsqueeze(0)
    n = y.shape[0]
    y = y.reshape(n, y.shape[1], -1).index_select(2, positions)
    if kept is not None:
        y = y.index_select(1, kept.to(y.device))
    g, c = layer.groups, y.shape[1]
    return y.reshape(n, g, c // g, -1).permute(1, 0, 3, 2).reshape(g, -1, c // g).double()


def _rows64(cols: Tensor, g: int, bias: bool) -> Tensor:
    """(N, g x f, P) patches -> float64 rows (g, N x P, f [+ 1]) in one copy."""
    n, gf, p = cols.shape
    f = gf // g
    out = torch.empty(g, n * p, f + int(bias), dtype=torch.float64, device=cols.device)
    out[..., :f].view(g, n, p, f).copy_(cols.reshape(n, g, f, p).permute(1, 0, 3, 2))
    if bias:
        out[..., f] = 1.0
    return out


def row_chunks(layer: Layer, x: Tensor, y: Tensor, w: Tensor, kept: Tensor | None, sampled: Tensor | None,
               *, bias: bool, chunk: int = CHUNK) -> Iterator[tuple[Tensor, Tensor]]:
    """The regression's float64 rows ``(groups, rows, features [+ 1 for the bias])`` and targets
    ``(groups, rows, outputs per group)`` of the layer's input ``x`` and original output ``y``
    (its output channels ``kept``), a chunk of at most about ``chunk`` values at a time.
    ``sampled``: the output positions (flat, per sample) of a convolution, or the rows of a
    linear layer, to keep (None: all)."""
    g = layer.groups
    if not layer.conv:
        xs = x.reshape(-1, x.shape[-1])
        ys = y.reshape(-1, y.shape[-1])
        total = xs.shape[0] if sampled is None else sampled.numel()
        step = max(1, chunk // max(1, xs.shape[1]))
        for i in range(0, total, step):
            if sampled is None:
                xc, yc = xs[i:i + step], ys[i:i + step]
            else:
                rows = sampled[i:i + step].to(xs.device)
                xc, yc = xs.index_select(0, rows), ys.index_select(0, rows)
            if kept is not None:
                yc = yc.index_select(-1, kept.to(yc.device))
            yield _rows64(xc.T.unsqueeze(0), 1, bias), yc.unsqueeze(0).double()
        return
    xp, kernel, stride, dilation, out_w = _padded(layer, x, w)
    n, spatial = spatial_size(layer, y)
    positions = (torch.arange(spatial, device=x.device) if sampled is None else sampled.to(x.device))
    step = max(1, chunk // max(1, n * xp.shape[1] * kernel[0] * kernel[1]))
    for i in range(0, positions.numel(), step):
        pos = positions[i:i + step]
        yield (_rows64(_patches(xp, kernel, stride, dilation, out_w, pos), g, bias),
               _conv_targets(layer, y, kept, pos))


def sample(total: int, keep: int, index: int) -> Tensor | None:
    """``keep`` of ``range(total)`` at random, sorted (seeded by the batch ``index``), or None for all."""
    if total <= keep:
        return None
    g = torch.Generator().manual_seed(index)
    return torch.sort(torch.randperm(total, generator=g)[:keep]).values


def current(layer: Layer, w: Tensor, b: Tensor | None) -> Tensor:
    """The layer's weights in the regression's layout: (groups, features [+1], outputs per group)."""
    g = layer.groups
    if layer.conv:
        m = w.reshape(g, w.shape[0] // g, -1).transpose(1, 2)
    else:
        m = (w if layer.transposed else w.T).unsqueeze(0)
    if b is not None:
        m = torch.cat([m, b.reshape(g, 1, -1)], 1)
    return m.detach().double()


def store(layer: Layer, w: Tensor, b: Tensor | None, sol: Tensor) -> None:
    """Write the solution (regression layout) into the layer's weight and bias, in place."""
    with torch.no_grad():
        if b is not None:
            b.copy_(sol[:, -1, :].reshape(-1).to(b.dtype))
            sol = sol[:, :-1, :]
        if layer.conv:
            w.copy_(sol.transpose(1, 2).reshape(w.shape).to(w.dtype))
        else:
            m = sol[0]
            w.copy_((m if layer.transposed else m.T).to(w.dtype))
