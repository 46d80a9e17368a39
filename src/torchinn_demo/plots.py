"""Pictures of what an integral network does, as PNG files (matplotlib, Agg backend, no display).

* :func:`compression_curve`: accuracy or PSNR against the fraction of parameters kept, one line
  per method (the supplement's Figure 2);
* :func:`permutation`: a weight tensor before and after the channel permutation of
  :func:`torchinn.convert`, as images (neighbouring channels become similar);
* :func:`feature_maps`: the feature maps after a first convolution, in channel order, for the
  original network and the integral one (the supplement's Figure 4);
* :func:`side_by_side`: images next to each other with titles (super-resolution results).

Figures are drawn on a ``matplotlib.figure.Figure`` with its own Agg canvas, so nothing touches
``pyplot``'s global state or needs a display. Every function returns the path it wrote.

>>> import tempfile, os
>>> path = compression_curve(os.path.join(tempfile.mkdtemp(), "c.png"), [0.75, 0.5],
...                          {"INN": [0.98, 0.95], "L1": [0.97, 0.80]}, ylabel="accuracy")
>>> os.path.getsize(path) > 0
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from torchinn.io.fileio import atomic_open

__all__ = ["compression_curve", "permutation", "feature_maps", "side_by_side", "neighbour_distance",
           "row_variation"]

_STYLES = {  # label prefix -> (colour, marker, line style)
    "INN + grid": ("tab:blue", "o", "-"),
    "INN": ("tab:cyan", "s", "--"),
    "L1": ("tab:orange", "^", "-"),
    "random": ("tab:gray", "v", ":"),
    "elastic 0 s": ("tab:gray", "s", "--"),
    "elastic": ("tab:blue", "o", "-"),
    "compress": ("tab:orange", "^", "-"),
}


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"plots need matplotlib ({e}); install it with: pip install \"torchinn[demo]\"") from e
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    return path


def _style(label: str) -> tuple[str, str, str]:
    for prefix, style in _STYLES.items():
        if label.startswith(prefix):
            return style
    return ("tab:green", "D", "-")


def compression_curve(path: str | Path, kept: Sequence[float], series: Mapping[str, Sequence[float]], *,
                      references: Mapping[str, float] | None = None, ylabel: str = "accuracy",
                      title: str = "", percent: bool | None = None) -> Path:
    """One line per method: ``series[label][i]`` at ``kept[i]`` (fraction of the parameters kept),
    and a dashed horizontal line per ``references`` entry (the original network, bicubic...).
    ``percent`` shows the y values as percentages (default: when every value is in [0, 1])."""
    values = [v for vs in series.values() for v in vs] + list((references or {}).values())
    if percent is None:
        percent = all(0.0 <= v <= 1.0 for v in values)
    scale = 100.0 if percent else 1.0
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for label, ys in series.items():
        if len(ys) != len(kept):
            raise ValueError(f"series {label!r} has {len(ys)} values for {len(kept)} compression levels")
        colour, marker, line = _style(label)
        ax.plot([100 * k for k in kept], [scale * y for y in ys], marker=marker, linestyle=line, color=colour,
                label=label)
    for i, (label, y) in enumerate((references or {}).items()):
        ax.axhline(scale * y, color="black" if i == 0 else "tab:red", linestyle="--", linewidth=1, label=label)
    ax.set_xlabel("parameters kept (%)")
    ax.set_ylabel(f"{ylabel} (%)" if percent else ylabel)
    ax.invert_xaxis()  # more compression to the right, as in the supplement's Figure 2
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def row_variation(matrix: Tensor) -> float:
    """Total variation along the first dimension, ``sum |m[i+1] - m[i]|``, over its total L1 norm
    (a matrix of constant rows gives 0)."""
    m = matrix.detach().double().flatten(1)
    norm = float(m.abs().sum()) or 1.0
    return float((m[1:] - m[:-1]).abs().sum()) / norm


def permutation(path: str | Path, before: Tensor, after: Tensor, name: str = "weight") -> Path:
    """A weight tensor ``(out, in, ...)`` before and after the permutation, as two images of
    ``out`` rows by ``in * kernel`` columns (both channel dimensions may be reordered), with the
    total variation along the rows (:func:`row_variation`) in the titles."""
    if before.shape != after.shape:
        raise ValueError(f"before and after must have the same shape, got {tuple(before.shape)} "
                         f"and {tuple(after.shape)}")
    mats = [t.detach().double().cpu().reshape(t.shape[0], -1) for t in (before, after)]
    limit = float(max(m.abs().max() for m in mats)) or 1.0
    rows, cols = mats[0].shape
    fig = _figure(12.0, 1.5 + 4.0 * min(1.0, rows / cols) if cols else 5.0)
    axes = fig.subplots(1, 2)
    for ax, m, what in zip(axes, mats, ("as trained", "after the permutation (convert)")):
        im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        ax.set_title(f"{what}\nvariation along rows {row_variation(m):.3f}", fontsize=9)
        ax.set_xlabel("input channel x kernel position")
        ax.set_ylabel("output channel")
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(f"{name} {tuple(before.shape)}", fontsize=10)
    return _save(fig, path)


def _standardize(maps: Tensor) -> Tensor:
    m = maps.detach().double().cpu()
    flat = m.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return ((flat - lo[:, None]) / (hi - lo).clamp_min(1e-12)[:, None]).reshape(m.shape)


def neighbour_distance(maps: Tensor) -> float:
    """Mean absolute difference between the feature maps of neighbouring channels (each map
    scaled to [0, 1]) over that of all pairs of channels: below 1 when neighbours are alike."""
    m = _standardize(maps).flatten(1)
    if m.shape[0] < 2:
        return 0.0
    neighbours = float((m[1:] - m[:-1]).abs().mean())
    pairs = float(torch.cdist(m, m, p=1).sum()) / (m.shape[0] * (m.shape[0] - 1) * m.shape[1])
    return neighbours / (pairs or 1.0)


def _mosaic(maps: Tensor, columns: int) -> Tensor:
    m = _standardize(maps)
    c, h, w = m.shape
    rows = math.ceil(c / columns)
    out = torch.full((rows * (h + 1) - 1, columns * (w + 1) - 1), float("nan"), dtype=torch.float64)
    for i in range(c):
        r, k = divmod(i, columns)
        out[r * (h + 1): r * (h + 1) + h, k * (w + 1): k * (w + 1) + w] = m[i]
    return out


def feature_maps(path: str | Path, original: Tensor, integral: Tensor, title: str = "",
                 columns: int | None = None) -> Path:
    """Feature maps ``(C, H, W)`` of the original network and of the integral one, each channel
    scaled to [0, 1], in channel order (left to right, top to bottom), side by side; the titles
    give :func:`neighbour_distance`."""
    if original.ndim != 3 or integral.ndim != 3:
        raise ValueError(f"feature maps must be (C, H, W), got {tuple(original.shape)} and {tuple(integral.shape)}")
    columns = columns or max(1, math.ceil(math.sqrt(original.shape[0])))
    fig = _figure(11.0, 5.0 * math.ceil(original.shape[0] / columns) / columns + 0.9)
    axes = fig.subplots(1, 2)
    for ax, maps, what in zip(axes, (original, integral), ("original (discrete) network", "integral network")):
        ax.imshow(_mosaic(maps, columns).numpy(), cmap="viridis", interpolation="nearest")
        ax.set_title(f"{what}: {maps.shape[0]} channels in order\nneighbour / any-pair distance "
                     f"{neighbour_distance(maps):.2f}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def side_by_side(path: str | Path, images: Mapping[str, Tensor], title: str = "") -> Path:
    """RGB ``(3, H, W)`` or grey ``(H, W)`` images in [0, 1], in a row, titled by their keys."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to show")
    fig = _figure(3.2 * n, 3.6)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (label, img) in zip(axes, images.items()):
        t = img.detach().float().cpu().clamp(0, 1)
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        ax.imshow(t.numpy(), cmap="gray" if t.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
