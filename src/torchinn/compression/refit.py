"""Least-squares refit of the layers that consume pruned channels (the reconstruction baseline).

ThiNet (Luo et al., 2017) and channel pruning (He et al., 2017) follow channel selection with a
least-squares refit: every layer whose *input* channels shrank gets new weights (and bias) so that
its output on calibration data matches the original network's output at that layer,

    min_W,b ||X_kept W^T + b - Y_orig||^2 + lam ||[W, b] - [W_sel, b_sel]||^2,

a small ridge pulling towards the selected weights (so that directions the calibration data never
excites stay as selection left them). ``X_kept`` comes from the *pruned* network with every layer
before it already refit (so errors do not accumulate); ``Y_orig`` from the original one, restricted
to the output channels the layer keeps. Convolutions are regressions on their unfolded input
patches, one per convolution group (stride, padding, dilation and groups respected), at a random
sample of output positions when a batch has more than the fit needs. The normal equations are
accumulated in float64 chunk by chunk of rows (:mod:`torchinn.compression.regression`: a convolution's patches
are gathered at the kept positions only, never unfolded whole), so any amount of calibration data
fits. The ridge is chosen by two-fold cross-validation (:mod:`torchinn.compression.ridge`: every
ridge's held-out error from one eigendecomposition where that is cheaper than solving each).

Memory: refitting one layer holds, besides the activations of one calibration batch (the layer's
input in the pruned network, its output in the full one, and a padded copy of half the input),
at most ``max_bytes`` of normal equations and one chunk of rows (``chunk`` values, about
``regression.BYTES_PER_VALUE * chunk`` bytes: 48 MiB by default; at least one output position of
every sample of half a batch). The values each capture keeps to resume the next layer's capture
(see :class:`torchinn.compression.capture.Capture`) are bounded by :data:`SAVED_BYTES` per network.

Refit: the ops of the layer kinds of :mod:`torchinn.graph.kinds`: ``"linear"`` (``aten.linear``),
``"mm"`` / ``"matmul"`` (``aten.addmm`` / ``aten.mm`` / ``aten.matmul``) with a weight matrix
(through ``t``/``transpose``/``permute`` and other views), and 1-d / 2-d convolutions of kind
``"conv"`` (``conv1d``, ``conv2d``, non-transposed ``convolution``; grouped and depthwise too),
a user's op of those kinds included (a kind that is not exact is fit on its map's output). Kept as selected, with a log message: transposed and
3-d convolutions, weights used by more than one layer, weights computed from other tensors, and
``addmm`` with ``alpha``/``beta`` other than 1, and a layer whose normal equations would take more
than ``max_bytes`` (:data:`MAX_SYSTEM_BYTES`: a convolution of 512 input channels and 64 taps has
32.8k features, 8.6 GB per matrix): only that layer is skipped,
before its activations are captured.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, fx

from . import clock as timer
from .capture import Capture, bound_args
from ..graph.kinds import Kind, is_view, node_kind
from .regression import CHUNK, Layer, current, features, in_channels, row_chunks, sample, \
    spatial_size, store
from ..model.inputs import batch_inputs, padding_mask
from .ridge import NormalEquations, cross_validate

__all__ = ["graph_tensor", "refit_consumers"]

log = logging.getLogger(__name__)

#: rows of a layer's regression kept per calibration batch (see _batch_sample)
ROWS_PER_BATCH = 256
ROWS_PER_FEATURE = 64
#: bound on the float64 normal equations of one layer's refit, in bytes: PEAK_COPIES matrices of
#: ``groups x (features + 1)^2`` (the two folds, their sum, and the matrix and factor of a solve)
MAX_SYSTEM_BYTES = 512 * 2**20
PEAK_COPIES = 5
#: bound on the bytes of the values a capture keeps, over all calibration batches, to resume the
#: next layer's capture where it stopped (a batch beyond it is run again from its inputs)
SAVED_BYTES = 256 * 2**20


def _attr(n: Any) -> tuple[str | None, list[fx.Node]]:
    """The get_attr behind ``n`` through views (:mod:`torchinn.graph.kinds`), and the views on the way."""
    chain = []
    while isinstance(n, fx.Node) and n.op == "call_function" and is_view(n.target):
        chain.append(n)
        n = n.args[0]
    if isinstance(n, fx.Node) and n.op == "get_attr":
        return str(n.target), chain[::-1]
    return None, []


def _is_transposed(gm: fx.GraphModule, name: str, chain: list[fx.Node]) -> bool | None:
    """Whether the matrix the layer multiplies by is the stored tensor transposed (None: neither)."""
    t = graph_tensor(gm, name)
    if t.ndim != 2:
        return None
    idx = torch.arange(t.numel()).reshape(t.shape)
    m = idx
    for n in chain:
        m = n.target(m, *n.args[1:], **n.kwargs)
    if m.shape == idx.shape and torch.equal(m, idx):
        return False
    if m.shape == idx.T.shape and torch.equal(m, idx.T):
        return True
    return None


def _layer_kind(node: fx.Node) -> tuple[Kind | None, list[Any]]:
    """The kind of a layer op (:mod:`torchinn.graph.kinds`) and its :func:`bound_args`, else
    (None, [])."""
    if node.op != "call_function" or getattr(node.target, "_schema", None) is None:
        return None, []
    values = bound_args(node, node.args, node.kwargs)
    kind = node_kind(node.target, values)
    return (kind, values) if kind is not None and kind.is_layer else (None, [])


def _ndim(n: Any) -> int | None:
    val = n.meta.get("val") if isinstance(n, fx.Node) else None
    return val.ndim if isinstance(val, Tensor) else None


def find_layer(gm: fx.GraphModule, node: fx.Node) -> tuple[Layer | None, str]:
    """The layer ``node`` computes, or None and why it cannot be refit."""
    kind, a = _layer_kind(node)
    if kind is None:
        return None, "not a linear layer or convolution"
    if kind.name == "conv_transpose":
        return None, "transposed convolution"
    if kind.name == "conv":
        if _ndim(kind.arg(a, "weight")) == 5:
            return None, "3-d convolution"
        weight, chain = _attr(kind.arg(a, "weight"))
        if weight is None or chain:
            return None, "its weight is not a plain tensor"
        w = graph_tensor(gm, weight)
        if w.ndim not in (3, 4):
            return None, f"{w.ndim - 2}-d convolution"
        k = w.ndim - 2
        bias = kind.arg(a, "bias")
        bias_name, bchain = _attr(bias) if bias is not None else (None, [])
        if bias is not None and (bias_name is None or bchain):
            return None, "its bias is not a plain tensor"

        def fix(v: Sequence[int]) -> tuple[int, ...]:
            return tuple(v) * (k if len(v) == 1 else 1)

        stride, padding, dilation = a[kind.stride:kind.stride + 3]
        padding = padding if isinstance(padding, str) else fix(padding)
        return Layer(node.name, weight, bias_name, True, stride=fix(stride), padding=padding,
                     dilation=fix(dilation), groups=int(kind.arg(a, "groups", 1))), ""
    if kind.name == "linear":
        weight, chain, bias, transposed = *_attr(kind.arg(a, "weight")), kind.arg(a, "bias"), False
        if chain:
            return None, "its weight is not a plain tensor"
    else:  # a product by a weight matrix, maybe seen through views
        scalars = {s.name: v for s, v in zip(node.target._schema.arguments, a) if s.name in ("alpha", "beta")}
        if any(v != 1 for v in scalars.values()):
            return None, f"{node.target.overloadpacket.__name__} with alpha or beta other than 1"
        weight, chain = _attr(kind.arg(a, "weight"))
        bias = kind.arg(a, "bias")
        transposed = None if weight is None else _is_transposed(gm, weight, chain)
        if transposed is None:  # e.g. a product of two activations (attention)
            return None, "it does not multiply by a weight matrix"
        transposed = not transposed  # the product uses W^T: the stored (out, in) is transposed
    if weight is None:
        return None, "its weight is not a plain tensor"
    bias_name, bchain = _attr(bias) if bias is not None else (None, [])
    if bias is not None and (bias_name is None or bchain):
        return None, "its bias is not a plain tensor"
    return Layer(node.name, weight, bias_name, False, transposed=transposed), ""


def graph_tensor(gm: fx.GraphModule, name: str) -> Tensor:
    """The parameter or buffer of ``gm`` called ``name``."""
    mod, _, leaf = name.rpartition(".")
    return getattr(gm.get_submodule(mod), leaf)


def _unfit_consumer(full: fx.GraphModule, pruned: fx.GraphModule, node: fx.Node) -> str | None:
    """The weight of a convolution that cannot be refit (transposed, 3-d) if its input channels
    shrank, else None."""
    kind, a = _layer_kind(node)
    if kind is None or kind.name not in ("conv", "conv_transpose"):
        return None
    weight, chain = _attr(kind.arg(a, "weight"))
    if weight is None or chain:
        return None
    in_dim = kind.weight_in  # (in, out/g, ...) or (out, in/g, ...)
    return weight if graph_tensor(pruned, weight).shape[in_dim] != graph_tensor(full, weight).shape[in_dim] else None


def system_bytes(layer: Layer, w: Tensor, bias: bool) -> int:
    """Bytes of the float64 normal equations the refit of ``layer`` (weight ``w``) holds at once."""
    f = features(layer, w) + int(bias)
    return PEAK_COPIES * layer.groups * f * f * 8


def refit_consumers(full: fx.GraphModule, pruned: fx.GraphModule, calibration: Sequence[Any],
                    kept: Mapping[str, Sequence[Tensor | None]],
                    ridge: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
                    chunk: int = CHUNK, max_bytes: int | None = None,
                    deadline: float | None = None) -> dict[str, dict[str, Any]]:
    """Refit, in place and in graph order, every layer of ``pruned`` whose input channels are fewer
    than in ``full`` (matched by weight name). ``kept[weight][dim]``: the positions of the full
    tensor's ``dim`` that ``pruned`` keeps (None: all). ``ridge``: relative ridge strengths; with
    more than one, the one with the lowest two-fold cross-validated error (even and odd samples) is
    used, and a layer where none beats the selected weights keeps them. Returns per weight name the
    relative error of the layer's output on the calibration data before and after (and held out),
    or why it was skipped, with the ``rows`` fitted, the ``bytes`` of its normal equations and the
    ``seconds`` it took. ``max_bytes`` (default :data:`MAX_SYSTEM_BYTES`): a layer whose normal
    equations (:func:`system_bytes`) would take more keeps its selected weights (logged), the
    others are still refit. ``chunk``: values of the regression's rows built at once. ``deadline``
    (a :func:`~torchinn.compression.clock.now` value): the layers not started by then, or that would end past it
    (by the time the last layer of the same full weight shape took: a LM's ``down_proj`` refits take
    seconds each; a shape not refit yet, by the most seconds per feature a layer has taken, times its
    own features: on a LM the refit's time grows about as its features, the rows being the tokens), keep their selected weights (reported as skipped), so the
    network returned is still a consistent, partly refit one."""
    bound = MAX_SYSTEM_BYTES if max_bytes is None else max_bytes
    report: dict[str, dict[str, Any]] = {}
    full_layers = {}
    for node in full.graph.nodes:
        kind, _ = _layer_kind(node)
        if kind is not None and kind.name != "conv_transpose":
            layer, _ = find_layer(full, node)
            if layer is not None:
                full_layers[layer.weight] = layer
    cap_full, cap_pruned = Capture(full, SAVED_BYTES), Capture(pruned, SAVED_BYTES)
    uses: dict[str, int] = {}
    took: dict[tuple, float] = {}  # full weight shape -> seconds of the last refit of a layer of that shape
    rate = 0.0  # the most seconds per feature (the root of the bytes below) a refit has taken: for a new shape
    for node in pruned.graph.nodes:
        if node.op == "get_attr":
            uses[str(node.target)] = uses.get(str(node.target), 0) + len(node.users)
    for node in list(pruned.graph.nodes):
        if _layer_kind(node)[0] is None:
            continue
        layer, why = find_layer(pruned, node)
        if layer is None:
            weight = _unfit_consumer(full, pruned, node)
            if weight is not None:
                report[weight] = {"skipped": why}
                log.info("reconstruct: %r kept as selected: %s", weight, why)
            continue
        w = graph_tensor(pruned, layer.weight)
        name = layer.weight
        if name not in full_layers:
            report[name] = {"skipped": "no layer with this weight in the full network"}
            continue
        if in_channels(layer, w) == in_channels(full_layers[name], graph_tensor(full, name)):
            continue  # its inputs did not shrink: not a consumer
        if uses.get(layer.weight, 0) > 1 or (layer.bias is not None and uses.get(layer.bias, 0) > 1):
            report[name] = {"skipped": "its weight or bias is used by more than one layer"}
            log.warning("reconstruct: %r kept as selected: used by more than one layer", name)
            continue
        need = system_bytes(layer, w, layer.bias is not None)
        if need > bound:
            report[name] = {"skipped": f"its normal equations would take {need / 2**20:.1f} MiB, more than "
                                       f"the bound of {bound / 2**20:.1f} MiB", "bytes": need}
            log.warning("reconstruct: %r kept as selected: its normal equations would take %.1f MiB "
                        "(bound %.1f MiB)", name, need / 2**20, bound / 2**20)
            continue
        shape = tuple(graph_tensor(full, name).shape)
        guess = took.get(shape, rate * math.sqrt(need))
        if deadline is not None and timer.now() + guess > deadline:
            why = "the deadline passed before this layer"
            if shape in took:
                why = f"a layer of this shape took {took[shape]:.2f} s: past the deadline"
            elif guess:
                why = f"about {guess:.2f} s, by the layers refit so far per feature: past the deadline"
            report[name] = {"skipped": f"out of time ({why})"}
            continue
        out_dim = 1 if layer.transposed else 0
        start = timer.now()
        report[name] = _refit_layer(layer, cap_full, full_layers[name].node, cap_pruned, calibration,
                                    kept.get(name, [None] * w.ndim)[out_dim], ridge, chunk)
        report[name].update(bytes=need, seconds=timer.now() - start)
        took[shape] = report[name]["seconds"]
        rate = max(rate, took[shape] / math.sqrt(need))
    skipped = {n: r["skipped"] for n, r in report.items() if "skipped" in r}
    log.info("reconstruct: %d layers refit, %d kept as selected%s", len(report) - len(skipped), len(skipped),
             "".join(f"; {n!r}: {why}" for n, why in skipped.items()))
    return report


def _halves(x: Tensor, y: Tensor, batched: bool, index: int, mask: Tensor | None = None
            ) -> list[tuple[int, Tensor, Tensor, Tensor | None]]:
    """(fold, inputs, outputs, padding mask): even and odd samples of a batch go to the two folds
    (alternating from batch to batch); a batch of one sample goes whole to fold ``index % 2``."""
    if not batched or x.shape[0] < 2:
        return [(index % 2, x, y, mask)]
    return [((index + p) % 2, x[p::2], y[p::2], None if mask is None else mask[p::2]) for p in (0, 1)]


def _keep_rows(features: int, n_batches: int) -> int:
    return max(ROWS_PER_BATCH, math.ceil(ROWS_PER_FEATURE * features / max(1, n_batches)))


def _batch_sample(layer: Layer, x: Tensor, y: Tensor, w: Tensor, n_batches: int, index: int,
                  mask: Tensor | None = None) -> Tensor | None:
    """The rows of a batch's regression to keep, at most about ``max(ROWS_PER_BATCH,
    ROWS_PER_FEATURE * features / n_batches)`` of them, drawn at random (seeded by the batch): a
    convolution gives a row per sample and output position, far more than a least-squares fit of
    its features needs (ThiNet and channel pruning sample 10 positions per image); a
    convolution's positions (the same for every sample) are drawn before anything is unfolded. On
    EDSR (433 features, 8,192 positions per batch of patches, 32 batches) the refit took 40 s of a
    60 s budget with every row. None: all rows. ``mask``: the batch's padding mask (a linear
    layer's rows at padded positions are left out)."""
    keep = _keep_rows(features(layer, w), n_batches)
    if layer.conv:
        n, spatial = spatial_size(layer, y)
        return sample(spatial, math.ceil(keep / n), index)
    if mask is not None and x.ndim == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
        # a padded batch's (batch, positions, features) input: rows at its real positions only
        real = (mask.reshape(-1) != 0).nonzero().reshape(-1)
        picked = sample(real.numel(), keep, index)
        return real if picked is None else real[picked]
    return sample(x.numel() // max(1, x.shape[-1]), keep, index)


def _refit_layer(layer: Layer, cap_full: Capture, full_node: str, cap_pruned: Capture,
                 calibration: Sequence[Any], kept: Tensor | None, ridge: Sequence[float],
                 chunk: int) -> dict[str, Any]:
    pruned = cap_pruned.module
    n_batches = len(calibration) if isinstance(calibration, Sequence) else 1
    w, b = graph_tensor(pruned, layer.weight), (graph_tensor(pruned, layer.bias) if layer.bias else None)
    folds = [NormalEquations(), NormalEquations()]
    with torch.no_grad():
        for index, batch in enumerate(calibration):
            inputs = batch_inputs(batch)
            x, _ = cap_pruned.capture(inputs, layer.node, index)
            _, y = cap_full.capture(inputs, full_node, index)
            batched = x.ndim == w.ndim if layer.conv else x.ndim > 1
            for fold, xh, yh, mh in _halves(x, y, batched, index, padding_mask(inputs)):
                rows = _batch_sample(layer, xh, yh, w, n_batches, index, mh)
                for xs, ys in row_chunks(layer, xh, yh, w, kept, rows, bias=b is not None, chunk=chunk):
                    folds[fold].add(xs, ys)
    if all(f.empty for f in folds):
        raise ValueError("the calibration loader is empty")
    prior = current(layer, w, b).to(next(f for f in folds if not f.empty).diag.device)
    scale = max(folds[0].yty + folds[1].yty, 1e-30)
    out: dict[str, Any] = {"rows": folds[0].rows + folds[1].rows}
    best = ridge[0]
    if len(ridge) > 1 and not any(f.empty for f in folds):
        # two-fold cross-validation of the ridge; infinite ridge = the selected weights
        held_sel = folds[0].sse(prior) + folds[1].sse(prior)
        held, total = cross_validate(folds, ridge, prior)
        best = min(held, key=lambda r: held[r])
        out.update(held_out_before=math.sqrt(held_sel / scale), held_out_after=math.sqrt(held[best] / scale))
        if not held[best] < held_sel:
            return dict(out, skipped="no refit lowered the held-out calibration error")
    else:
        total = folds[0].merged(folds[1])
    sol = total.solve(best, prior)
    before, after = total.sse(prior), total.sse(sol)
    if not (math.isfinite(after) and after <= before):
        return dict(out, skipped="the refit did not lower the calibration error")
    store(layer, w, b, sol)
    return dict(out, ridge=best, before=math.sqrt(before / scale), after=math.sqrt(after / scale))
