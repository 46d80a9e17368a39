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
fits.

Memory: refitting one layer holds, besides the activations of one calibration batch (the layer's
input in the pruned network, its output in the full one, and a padded copy of half the input),
at most ``max_bytes`` of normal equations and one chunk of rows (``chunk`` values, about
``regression.BYTES_PER_VALUE * chunk`` bytes: 48 MiB by default; at least one output position of
every sample of half a batch). The values each capture keeps to resume the next layer's capture
(see :class:`_Capture`) are bounded by :data:`SAVED_BYTES` per network.

Refit: ``aten.linear``, ``aten.addmm`` / ``aten.mm`` / ``aten.matmul`` with a weight matrix (through
``t``/``transpose``/``permute``), and 1-d / 2-d convolutions (``conv1d``, ``conv2d``, non-transposed
``convolution``; grouped and depthwise too). Kept as selected, with a log message: transposed and
3-d convolutions, weights used by more than one layer, weights computed from other tensors, and
``addmm`` with ``alpha``/``beta`` other than 1, and a layer whose normal equations would take more
than ``max_bytes`` (:data:`MAX_SYSTEM_BYTES`: a convolution of 512 input channels and 64 taps has
32.8k features, 8.6 GB per matrix): only that layer is skipped,
before its activations are captured.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, fx
from torch.utils import _pytree as pytree

from .regression import CHUNK, Layer, NormalEquations, current, features, in_channels, row_chunks, sample, \
    spatial_size, store
from ..model.inputs import batch_inputs

__all__ = ["refit_consumers"]

log = logging.getLogger(__name__)
aten = torch.ops.aten

_CONV = {aten.conv1d.default, aten.conv2d.default, aten.conv1d.padding, aten.conv2d.padding,
         aten.convolution.default}
_MM = {aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default}
_TRANSPOSED = {aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input}
_UNFIT = _TRANSPOSED | {aten.conv3d.default, aten.conv3d.padding}  # convolutions kept as selected
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
_VIEWS = {aten.t.default, aten.transpose.int, aten.permute.default, aten.numpy_T.default}


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
    layer). A node at or before the last stop starts over from the inputs. The kept values of all
    batches together take at most :data:`SAVED_BYTES` (the network's own tensors and its inputs
    not counted): a batch whose values would not fit is run again from its inputs at its next
    capture."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.node = ""
        self.order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        self.saved: dict[int, tuple[int, dict[fx.Node, Any]]] = {}
        self.saved_bytes: dict[int, int] = {}
        self.own = {t.untyped_storage().data_ptr() for t in [*gm.parameters(), *gm.buffers()]}

    def _held_bytes(self, env: dict[fx.Node, Any]) -> int:
        """Bytes of the tensors in ``env`` that are neither the network's own nor its inputs (each
        storage once)."""
        seen, total = set(self.own), 0
        for node, value in env.items():
            if node.op == "placeholder":  # the batch: the caller holds it anyway
                continue
            for t in pytree.tree_leaves(value):
                if isinstance(t, Tensor):
                    storage = t.untyped_storage()
                    if storage.data_ptr() not in seen:
                        seen.add(storage.data_ptr())
                        total += storage.nbytes()
        return total

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
        self.saved_bytes.pop(key, None)
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
            held = self._held_bytes(self.env)
            if held + sum(self.saved_bytes.values()) <= SAVED_BYTES:
                self.saved[key], self.saved_bytes[key] = (pos, self.env), held
            return stop.inputs, stop.output
        raise RuntimeError(f"node {self.node!r} was not reached")


def _tensor(gm: fx.GraphModule, name: str) -> Tensor:
    mod, _, leaf = name.rpartition(".")
    return getattr(gm.get_submodule(mod), leaf)


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
    (a ``time.perf_counter()`` value): the layers not started by then keep their selected weights
    (reported as skipped), so the network returned is still a consistent, partly refit one."""
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
        if in_channels(layer, w) == in_channels(full_layers[name], _tensor(full, name)):
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
        if deadline is not None and time.perf_counter() > deadline:
            report[name] = {"skipped": "out of time (the deadline passed before this layer)"}
            continue
        out_dim = 1 if layer.transposed else 0
        start = time.perf_counter()
        report[name] = _refit_layer(layer, cap_full, full_layers[name].node, cap_pruned, calibration,
                                    kept.get(name, [None] * w.ndim)[out_dim], ridge, chunk)
        report[name].update(bytes=need, seconds=time.perf_counter() - start)
    skipped = {n: r["skipped"] for n, r in report.items() if "skipped" in r}
    log.info("reconstruct: %d layers refit, %d kept as selected%s", len(report) - len(skipped), len(skipped),
             "".join(f"; {n!r}: {why}" for n, why in skipped.items()))
    return report


def _halves(x: Tensor, y: Tensor, batched: bool, index: int) -> list[tuple[int, Tensor, Tensor]]:
    """(fold, inputs, outputs): even and odd samples of a batch go to the two folds (alternating
    from batch to batch); a batch of one sample goes whole to fold ``index % 2``."""
    if not batched or x.shape[0] < 2:
        return [(index % 2, x, y)]
    return [((index + p) % 2, x[p::2], y[p::2]) for p in (0, 1)]


def _keep_rows(features: int, n_batches: int) -> int:
    return max(ROWS_PER_BATCH, math.ceil(ROWS_PER_FEATURE * features / max(1, n_batches)))


def _batch_sample(layer: Layer, x: Tensor, y: Tensor, w: Tensor, n_batches: int, index: int) -> Tensor | None:
    """The rows of a batch's regression to keep, at most about ``max(ROWS_PER_BATCH,
    ROWS_PER_FEATURE * features / n_batches)`` of them, drawn at random (seeded by the batch): a
    convolution gives a row per sample and output position, far more than a least-squares fit of
    its features needs (ThiNet and channel pruning sample 10 positions per image); a
    convolution's positions (the same for every sample) are drawn before anything is unfolded. On
    EDSR (433 features, 8,192 positions per batch of patches, 32 batches) the refit took 40 s of a
    60 s budget with every row. None: all rows."""
    keep = _keep_rows(features(layer, w), n_batches)
    if layer.conv:
        n, spatial = spatial_size(layer, y)
        return sample(spatial, math.ceil(keep / n), index)
    return sample(x.numel() // max(1, x.shape[-1]), keep, index)


def _refit_layer(layer: Layer, cap_full: _Capture, full_node: str, cap_pruned: _Capture,
                 calibration: Sequence[Any], kept: Tensor | None, ridge: Sequence[float],
                 chunk: int) -> dict[str, Any]:
    pruned = cap_pruned.module
    n_batches = len(calibration) if isinstance(calibration, Sequence) else 1
    w, b = _tensor(pruned, layer.weight), (_tensor(pruned, layer.bias) if layer.bias else None)
    folds = [NormalEquations(), NormalEquations()]
    with torch.no_grad():
        for index, batch in enumerate(calibration):
            inputs = batch_inputs(batch)
            x, _ = cap_pruned.capture(inputs, layer.node, index)
            _, y = cap_full.capture(inputs, full_node, index)
            batched = x.ndim == w.ndim if layer.conv else x.ndim > 1
            for fold, xh, yh in _halves(x, y, batched, index):
                rows = _batch_sample(layer, xh, yh, w, n_batches, index)
                for xs, ys in row_chunks(layer, xh, yh, w, kept, rows, bias=b is not None, chunk=chunk):
                    folds[fold].add(xs, ys)
    total = folds[0].merged(folds[1])
    if total.xtx is None:
        raise ValueError("the calibration loader is empty")
    prior = current(layer, w, b).to(total.xtx.device)
    scale = max(total.yty, 1e-30)
    out: dict[str, Any] = {"rows": total.rows}
    best = ridge[0]
    if len(ridge) > 1 and all(f.xtx is not None for f in folds):
        # two-fold cross-validation of the ridge; infinite ridge = the selected weights
        held_sel = folds[0].sse(prior) + folds[1].sse(prior)
        held = {r: folds[1].sse(folds[0].solve(r, prior)) + folds[0].sse(folds[1].solve(r, prior))
                for r in ridge}
        best = min(held, key=lambda r: held[r])
        out.update(held_out_before=math.sqrt(held_sel / scale), held_out_after=math.sqrt(held[best] / scale))
        if not held[best] < held_sel:
            return dict(out, skipped="no refit lowered the held-out calibration error")
    sol = total.solve(best, prior)
    before, after = total.sse(prior), total.sse(sol)
    if not (math.isfinite(after) and after <= before):
        return dict(out, skipped="the refit did not lower the calibration error")
    store(layer, w, b, sol)
    return dict(out, ridge=best, before=math.sqrt(before / scale), after=math.sqrt(after / scale))
