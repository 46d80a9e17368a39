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
accumulated in float64 batch by batch, so any amount of calibration data fits.

Refit: ``aten.linear``, ``aten.addmm`` / ``aten.mm`` / ``aten.matmul`` with a weight matrix (through
``t``/``transpose``/``permute``), and 1-d / 2-d convolutions (``conv1d``, ``conv2d``, non-transposed
``convolution``; grouped and depthwise too). Kept as selected, with a log message: transposed and
3-d convolutions, weights used by more than one layer, weights computed from other tensors, and
``addmm`` with ``alpha``/``beta`` other than 1, and a layer whose normal equations would take more
than ``max_bytes`` (:data:`MAX_SYSTEM_BYTES`: a convolution of 512 input channels and 64 taps has
32.8k features, 8.6 GB per matrix, and its rows would take more): only that layer is skipped,
before its activations are captured.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx

from .train import batch_inputs

__all__ = ["refit_consumers"]

log = logging.getLogger(__name__)
aten = torch.ops.aten

_CONV = {aten.conv1d.default, aten.conv2d.default, aten.conv1d.padding, aten.conv2d.padding,
         aten.convolution.default}
_MM = {aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default}
_TRANSPOSED = {aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input}
_UNFIT = _TRANSPOSED | {aten.conv3d.default, aten.conv3d.padding}  # convolutions kept as selected
#: rows of a layer's regression kept per calibration batch (see _batch_rows)
ROWS_PER_BATCH = 256
ROWS_PER_FEATURE = 64
#: bound on the float64 normal equations of one layer's refit, in bytes: PEAK_COPIES matrices of
#: ``groups x (features + 1)^2`` (the two folds, their sum, and the matrix and factor of a solve)
MAX_SYSTEM_BYTES = 512 * 2**20
PEAK_COPIES = 5
_VIEWS = {aten.t.default, aten.transpose.int, aten.permute.default, aten.numpy_T.default}


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


def _bind(node: fx.Node, args: tuple, kwargs: dict) -> dict[str, Any]:
    out = {}
    for i, a in enumerate(node.target._schema.arguments):
        if i < len(args):
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def _attr(n: Any) -> tuple[str | None, list[fx.Node]]:
    """The get_attr behind ``n`` through transposes, and the transposes on the way."""
    chain = []
    while isinstance(n, fx.Node) and n.op == "call_function" and n.target in _VIEWS:
        chain.append(n)
        n = n.args[0]
    if isinstance(n, fx.Node) and n.op == "get_attr":
        return str(n.target), chain[::-1]
    return None, []


def _is_transposed(gm: fx.GraphModule, name: str, chain: list[fx.Node]) -> bool | None:
    """Whether the matrix the layer multiplies by is the stored tensor transposed (None: neither)."""
    t = _tensor(gm, name)
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


def find_layer(gm: fx.GraphModule, node: fx.Node) -> tuple[Layer | None, str]:
    """The layer ``node`` computes, or None and why it cannot be refit."""
    a = _bind(node, node.args, node.kwargs)
    if node.target in _CONV:
        if a.get("transposed", False):
            return None, "transposed convolution"
        weight, chain = _attr(a["weight"])
        if weight is None or chain:
            return None, "its weight is not a plain tensor"
        w = _tensor(gm, weight)
        if w.ndim not in (3, 4):
            return None, f"{w.ndim - 2}-d convolution"
        k = w.ndim - 2
        bias = a.get("bias")
        bias_name, bchain = _attr(bias) if bias is not None else (None, [])
        if bias is not None and (bias_name is None or bchain):
            return None, "its bias is not a plain tensor"

        def fix(v: Sequence[int]) -> tuple[int, ...]:
            return tuple(v) * (k if len(v) == 1 else 1)

        padding = a["padding"] if isinstance(a["padding"], str) else fix(a["padding"])
        return Layer(node.name, weight, bias_name, True, stride=fix(a["stride"]), padding=padding,
                     dilation=fix(a["dilation"]), groups=int(a["groups"])), ""
    if node.target in _MM:
        if node.target is aten.linear.default:
            weight, chain, bias, transposed = *_attr(a["weight"]), a.get("bias"), False
            if chain:
                return None, "its weight is not a plain tensor"
        else:
            if node.target is aten.addmm.default and (a["alpha"] != 1 or a["beta"] != 1):
                return None, "addmm with alpha or beta other than 1"
            weight, chain = _attr(a["mat2"] if "mat2" in a else a["other"])
            bias = a.get("self") if node.target is aten.addmm.default else None
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
    if node.target in _TRANSPOSED:
        return None, "transposed convolution"
    if node.target in _UNFIT:
        return None, "3-d convolution"
    return None, "not a linear layer or convolution"


class _Stop(Exception):
    """Raised at the captured node (no args: fx would format them into its message)."""

    inputs: Tensor
    output: Tensor


class _Capture(fx.Interpreter):
    """Runs a graph up to one node and returns (its input activation, its output).

    Layers are refit in graph order, and a refit changes only the layer's own weights (in
    place), so the values computed before a node stay valid for the nodes after it: each capture
    keeps, per batch, the interpreter's live values where it stopped, and the next capture of that
    batch resumes from there (one forward pass per batch over all layers instead of one per
    layer). A node at or before the last stop starts over from the inputs."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.node = ""
        self.order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        self.saved: dict[int, tuple[int, dict[fx.Node, Any]]] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.name != self.node:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        out = n.target(*args, **kwargs)
        a = _bind(n, args, kwargs)
        x = a.get("input", a.get("mat1", a.get("self")))
        stop = _Stop()
        stop.inputs, stop.output = x, out
        raise stop

    def capture(self, inputs: tuple, node: str, key: int) -> tuple[Tensor, Tensor]:
        """(input, output) of ``node`` on ``inputs``, the batch named ``key``."""
        self.node, pos = node, self.order[node]
        last, env = self.saved.pop(key, (len(self.order), None))
        if env is not None:
            if last >= pos:
                env = None
            else:  # placeholders take the inputs again, in order; the nodes before the stop
                # whose values were freed (every user ran) are marked done
                env = {n: env.get(n) for n in self.graph.nodes if self.order[n.name] < last and n.op != "placeholder"}
        flat = self.module.graph._codegen.process_inputs(*inputs)
        try:
            self.run(*flat, initial_env=env)
        except _Stop as stop:
            self.saved[key] = (pos, self.env)
            return stop.inputs, stop.output
        raise RuntimeError(f"node {self.node!r} was not reached")


def _tensor(gm: fx.GraphModule, name: str) -> Tensor:
    mod, _, leaf = name.rpartition(".")
    return getattr(gm.get_submodule(mod), leaf)


def _design(layer: Layer, x: Tensor, w: Tensor, positions: Tensor | None = None) -> Tensor:
    """Rows of the regression, (groups, rows, features) without the bias column; a convolution's
    only at the output ``positions`` (flat indices) of every sample, if given."""
    if not layer.conv:
        return x.reshape(1, -1, x.shape[-1])
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
    x = F.pad(x, pads)
    if k == 1:
        x, kernel, stride, dilation = x.unsqueeze(2), (1,) + kernel, (1,) + stride, (1,) + dilation
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, C*kh*kw, L)
    if positions is not None:
        cols = cols[:, :, positions]
    g = layer.groups
    cols = cols.reshape(cols.shape[0], g, -1, cols.shape[-1])
    return cols.permute(1, 0, 3, 2).reshape(g, -1, cols.shape[2])


def _targets(layer: Layer, y: Tensor, kept: Tensor | None, positions: Tensor | None = None) -> Tensor:
    """The outputs to match, (groups, rows, outputs per group) (a convolution's at ``positions``)."""
    if layer.conv:
        if y.ndim == len(layer.stride) + 1:  # unbatched
            y = y.unsqueeze(0)
        if kept is not None:
            y = y.index_select(1, kept.to(y.device))
        n, c = y.shape[:2]
        if positions is not None:
            y = y.reshape(n, c, -1)[:, :, positions]
        g = layer.groups
        return y.reshape(n, g, c // g, -1).permute(1, 0, 3, 2).reshape(g, -1, c // g)
    if kept is not None:
        y = y.index_select(-1, kept.to(y.device))
    return y.reshape(1, -1, y.shape[-1])


def _current(layer: Layer, w: Tensor, b: Tensor | None) -> Tensor:
    """The layer's weights in the regression's layout: (groups, features [+1], outputs per group)."""
    g = layer.groups
    if layer.conv:
        m = w.reshape(g, w.shape[0] // g, -1).transpose(1, 2)
    else:
        m = (w if layer.transposed else w.T).unsqueeze(0)
    if b is not None:
        m = torch.cat([m, b.reshape(g, 1, -1)], 1)
    return m.detach().double()


def _store(layer: Layer, w: Tensor, b: Tensor | None, sol: Tensor) -> None:
    with torch.no_grad():
        if b is not None:
            b.copy_(sol[:, -1, :].reshape(-1).to(b.dtype))
            sol = sol[:, :-1, :]
        if layer.conv:
            w.copy_(sol.transpose(1, 2).reshape(w.shape).to(w.dtype))
        else:
            m = sol[0]
            w.copy_((m if layer.transposed else m.T).to(w.dtype))


def _in_channels(layer: Layer, w: Tensor) -> int:
    if layer.conv:
        return w.shape[1] * layer.groups
    return w.shape[0] if layer.transposed else w.shape[1]


def _unfit_consumer(full: fx.GraphModule, pruned: fx.GraphModule, node: fx.Node) -> str | None:
    """The weight of a convolution that cannot be refit (transposed, 3-d) if its input channels
    shrank, else None."""
    if node.target not in _CONV and node.target not in _UNFIT:
        return None
    a = _bind(node, node.args, node.kwargs)
    weight, chain = _attr(a["weight"])
    if weight is None or chain:
        return None
    transposed = node.target in _TRANSPOSED or a.get("transposed", False)
    in_dim = 0 if transposed else 1  # (in, out/g, ...) or (out, in/g, ...)
    return weight if _tensor(pruned, weight).shape[in_dim] != _tensor(full, weight).shape[in_dim] else None


def system_bytes(layer: Layer, w: Tensor, bias: bool) -> int:
    """Bytes of the float64 normal equations the refit of ``layer`` (weight ``w``) holds at once."""
    features = (w[0].numel() if layer.conv else w.shape[0 if layer.transposed else 1]) + int(bias)
    return PEAK_COPIES * layer.groups * features * features * 8


def refit_consumers(full: fx.GraphModule, pruned: fx.GraphModule, calibration: Sequence[Any],
                    kept: Mapping[str, Sequence[Tensor | None]],
                    ridge: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
                    chunk: int = 1 << 22, max_bytes: int | None = None) -> dict[str, dict[str, Any]]:
    """Refit, in place and in graph order, every layer of ``pruned`` whose input channels are fewer
    than in ``full`` (matched by weight name). ``kept[weight][dim]``: the positions of the full
    tensor's ``dim`` that ``pruned`` keeps (None: all). ``ridge``: relative ridge strengths; with
    more than one, the one with the lowest two-fold cross-validated error (even and odd samples) is
    used, and a layer where none beats the selected weights keeps them. Returns per weight name the
    relative error of the layer's output on the calibration data before and after (and held out),
    or why it was skipped. ``max_bytes`` (default :data:`MAX_SYSTEM_BYTES`): a layer whose normal
    equations (:func:`system_bytes`) would take more keeps its selected weights (logged)."""
    bound = MAX_SYSTEM_BYTES if max_bytes is None else max_bytes
    report: dict[str, dict[str, Any]] = {}
    full_layers = {}
    for node in full.graph.nodes:
        if node.op == "call_function" and (node.target in _CONV or node.target in _MM):
            layer, _ = find_layer(full, node)
            if layer is not None:
                full_layers[layer.weight] = layer
    cap_full, cap_pruned = _Capture(full), _Capture(pruned)
    uses: dict[str, int] = {}
    for node in pruned.graph.nodes:
        if node.op == "get_attr":
            uses[str(node.target)] = uses.get(str(node.target), 0) + len(node.users)
    for node in list(pruned.graph.nodes):
        if node.op != "call_function" or node.target not in _CONV | _MM | _UNFIT:
            continue
        layer, why = find_layer(pruned, node)
        if layer is None:
            weight = _unfit_consumer(full, pruned, node)
            if weight is not None:
                report[weight] = {"skipped": why}
                log.info("reconstruct: %r kept as selected: %s", weight, why)
            continue
        w = _tensor(pruned, layer.weight)
        name = layer.weight
        if name not in full_layers:
            report[name] = {"skipped": "no layer with this weight in the full network"}
            continue
        if _in_channels(layer, w) == _in_channels(full_layers[name], _tensor(full, name)):
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
        out_dim = 1 if layer.transposed else 0
        report[name] = _refit_layer(layer, cap_full, full_layers[name].node, cap_pruned, calibration,
                                    kept.get(name, [None] * w.ndim)[out_dim], ridge, chunk)
    return report


class _Normal:
    """The normal equations of one layer's regression, accumulated over rows (float64)."""

    def __init__(self) -> None:
        self.xtx: Tensor | None = None
        self.xty: Tensor | None = None
        self.yty = 0.0
        self.rows = 0

    def add(self, xs: Tensor, ys: Tensor, bias: bool, chunk: int) -> None:
        step = max(1, chunk // max(1, xs.shape[0] * xs.shape[2]))
        for i in range(0, xs.shape[1], step):
            xc, yc = xs[:, i:i + step].double(), ys[:, i:i + step].double()
            if bias:
                xc = torch.cat([xc, torch.ones_like(xc[..., :1])], -1)
            a, c = xc.transpose(1, 2) @ xc, xc.transpose(1, 2) @ yc
            self.xtx, self.xty = (a, c) if self.xtx is None else (self.xtx + a, self.xty + c)
            self.yty += float((yc * yc).sum())
            self.rows += xc.shape[1]

    def merged(self, other: _Normal) -> _Normal:
        if other.xtx is None:
            return self
        if self.xtx is None:
            return other
        out = _Normal()
        out.xtx, out.xty = self.xtx + other.xtx, self.xty + other.xty
        out.yty, out.rows = self.yty + other.yty, self.rows + other.rows
        return out

    def sse(self, m: Tensor) -> float:
        """Sum of squared errors of the weights ``m`` (regression layout) on these rows."""
        return max(0.0, float((m * (self.xtx @ m)).sum() - 2 * (m * self.xty).sum()) + self.yty)

    def solve(self, ridge: float, prior: Tensor) -> Tensor:
        """Least squares with a ridge (relative to the mean diagonal) pulling towards ``prior``."""
        lam = ridge * torch.diagonal(self.xtx, dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
        a = self.xtx.clone()
        a.diagonal(dim1=1, dim2=2).add_(lam[:, None])
        rhs = self.xty + lam[:, None, None] * prior
        chol, info = torch.linalg.cholesky_ex(a)  # positive definite but for rounding
        if bool((info == 0).all()):
            return torch.cholesky_solve(rhs, chol)
        return torch.linalg.solve(a, rhs)


def _halves(x: Tensor, y: Tensor, batched: bool, index: int) -> list[tuple[int, Tensor, Tensor]]:
    """(fold, inputs, outputs): even and odd samples of a batch go to the two folds (alternating
    from batch to batch); a batch of one sample goes whole to fold ``index % 2``."""
    if not batched or x.shape[0] < 2:
        return [(index % 2, x, y)]
    return [((index + p) % 2, x[p::2], y[p::2]) for p in (0, 1)]


def _keep_rows(features: int, n_batches: int) -> int:
    return max(ROWS_PER_BATCH, math.ceil(ROWS_PER_FEATURE * features / max(1, n_batches)))


def _sample(total: int, keep: int, index: int) -> Tensor | None:
    """``keep`` of ``range(total)`` at random, sorted (seeded by the batch ``index``), or None for all."""
    if total <= keep:
        return None
    g = torch.Generator().manual_seed(index)
    return torch.sort(torch.randperm(total, generator=g)[:keep]).values


def _batch_rows(layer: Layer, x: Tensor, y: Tensor, w: Tensor, kept: Tensor | None, n_batches: int,
                index: int) -> tuple[Tensor, Tensor]:
    """A batch's regression rows, at most about ``max(ROWS_PER_BATCH, ROWS_PER_FEATURE *
    features / n_batches)`` of them, drawn at random (seeded by the batch): a convolution gives a
    row per sample and output position, far more than a least-squares fit of its features needs
    (ThiNet and channel pruning sample 10 positions per image); a convolution's positions are
    drawn once per batch, before unfolding. On EDSR (433 features, 8,192 positions per batch of
    patches, 32 batches) the refit took 40 s of a 60 s budget with every row."""
    features = w[0].numel() if layer.conv else w.shape[0 if layer.transposed else 1]
    keep = _keep_rows(features, n_batches)
    if layer.conv:
        yb = y if y.ndim == len(layer.stride) + 2 else y.unsqueeze(0)
        spatial = math.prod(yb.shape[2:])
        positions = _sample(spatial, math.ceil(keep / yb.shape[0]), index)
        if positions is not None:
            positions = positions.to(y.device)
        return _design(layer, x, w, positions), _targets(layer, y, kept, positions)
    xs, ys = _design(layer, x, w), _targets(layer, y, kept)
    rows = _sample(xs.shape[1], keep, index)
    return (xs, ys) if rows is None else (xs[:, rows.to(xs.device)], ys[:, rows.to(ys.device)])


def _refit_layer(layer: Layer, cap_full: _Capture, full_node: str, cap_pruned: _Capture,
                 calibration: Sequence[Any], kept: Tensor | None, ridge: Sequence[float],
                 chunk: int) -> dict[str, Any]:
    pruned = cap_pruned.module
    n_batches = len(calibration) if isinstance(calibration, Sequence) else 1
    w, b = _tensor(pruned, layer.weight), (_tensor(pruned, layer.bias) if layer.bias else None)
    folds = [_Normal(), _Normal()]
    with torch.no_grad():
        for index, batch in enumerate(calibration):
            inputs = batch_inputs(batch)
            x, _ = cap_pruned.capture(inputs, layer.node, index)
            _, y = cap_full.capture(inputs, full_node, index)
            batched = x.ndim == w.ndim if layer.conv else x.ndim > 1
            for fold, xh, yh in _halves(x, y, batched, index):
                xs, ys = _batch_rows(layer, xh, yh, w, kept, n_batches, index)
                folds[fold].add(xs, ys, b is not None, chunk)
    total = folds[0].merged(folds[1])
    if total.xtx is None:
        raise ValueError("the calibration loader is empty")
    current = _current(layer, w, b).to(total.xtx.device)
    scale = max(total.yty, 1e-30)
    out: dict[str, Any] = {"rows": total.rows}
    best = ridge[0]
    if len(ridge) > 1 and all(f.xtx is not None for f in folds):
        # two-fold cross-validation of the ridge; infinite ridge = the selected weights
        held_sel = folds[0].sse(current) + folds[1].sse(current)
        held = {r: folds[1].sse(folds[0].solve(r, current)) + folds[0].sse(folds[1].solve(r, current))
                for r in ridge}
        best = min(held, key=lambda r: held[r])
        out.update(held_out_before=math.sqrt(held_sel / scale), held_out_after=math.sqrt(held[best] / scale))
        if not held[best] < held_sel:
            return dict(out, skipped="no refit lowered the held-out calibration error")
    sol = total.solve(best, current)
    before, after = total.sse(current), total.sse(sol)
    if not (math.isfinite(after) and after <= before):
        return dict(out, skipped="the refit did not lower the calibration error")
    _store(layer, w, b, sol)
    return dict(out, ridge=best, before=math.sqrt(before / scale), after=math.sqrt(after / scale))
