"""Handlers: what each ATen operation does to channel axes (see :mod:`.analysis`).

Grouped by kind: pass-through and elementwise ops, normalisations, reductions and softmax, and
spatial ops, and the helpers the other handler modules share (:func:`arg_label`,
:func:`node_arg`, :func:`pin_fixed`). Linear maps (linear, convolutions, matmul, einsum,
attention, embedding) are in :mod:`.linear`, shape ops (view, cat, ...) in :mod:`.shape`,
split/slice/index in :mod:`.slicing`. A handler returns
the output label and may register a rewrite for arguments that hold channel counts.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx

from ..analysis import Analysis, Label, hint
from ..labels import Fixed, Prod, Struct
from ..registry import register_op, same_dim

aten = torch.ops.aten

__all__ = ["arg_label", "node_arg", "pin_fixed"]


def _packets(*names: str) -> list[Any]:
    """The ATen op packets of these names that exist in this torch version."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


def arg_label(an: Analysis, node: fx.Node, i: int = 0) -> list[Struct]:
    """The label of ``node``'s positional argument ``i``, a tensor (a RuntimeError if it has none)."""
    lab = an.tensor_label(node.args[i])
    if lab is None:
        raise RuntimeError(f"node '{node.name}' ({node.target}): argument {i} has no tensor label")
    return lab


def pin_fixed(an: Analysis, node: fx.Node, lab: list[Struct], why: str) -> Label:
    """Pin every axis of ``lab`` (``why``: the reason shown) and return ``node``'s output as fixed."""
    an.pin(lab, node, why)
    return an.fixed_label(node.meta.get("val"))


def node_arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    """``node``'s argument at position ``i`` or named ``name``, else ``default``."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


# -- pass-through and elementwise -----------------------------------------------------------
# Every op that ``torch.Tag.pointwise`` marks (and its in-place variant) is elementwise with
# broadcasting without being listed (see :mod:`.registry`); here are the ones the tag misses.

_VIEWS = _packets("contiguous", "clone", "alias", "detach", "_to_copy", "to")
"""Same values, same dimensions: parameters are followed through them (see :mod:`.registry`)."""

_IDENTITY = _packets(
    "type_as", "lift_fresh_copy", "dropout", "dropout_", "feature_dropout", "alpha_dropout",
    "feature_alpha_dropout", "hardswish", "hardswish_", "log_sigmoid", "zeros_like", "ones_like",
    "full_like", "empty_like", "rand_like", "randn_like", "fill", "fill_",
)


def _identity(an: Analysis, node: fx.Node) -> Label:
    lab = an.tensor_label(node.args[0])
    return list(lab) if lab is not None else an.fixed_label(node.meta.get("val"))


register_op(*_VIEWS, view=same_dim)(_identity)
register_op(*_IDENTITY)(_identity)

_BROADCAST = _packets("rsub", "where", "masked_fill", "masked_fill_", "floor_divide", "copy_", "copy")


@register_op(*_BROADCAST)
def _broadcast(an: Analysis, node: fx.Node) -> Label:
    return an.broadcast(node, list(node.args) + list(node.kwargs.values()))


@register_op(aten.prelu, aten._prelu_kernel)
def _prelu(an: Analysis, node: fx.Node) -> Label:
    x, w = arg_label(an, node, 0), arg_label(an, node, 1)
    if len(w) == 1 and an.size(w[0]) > 1:
        an.unify(w[0], x[1 if len(x) > 1 else 0], node)
    return list(x)


@register_op(aten.sym_size, aten.sym_numel, aten.sym_stride)
def _sym(an: Analysis, node: fx.Node) -> Label:
    lab = an.tensor_label(node.args[0])
    if lab is not None and node.target is aten.sym_size.int:
        an.pin(lab[node.args[1]], node, "a channel count read as a Python int")
    elif lab is not None:
        an.pin(lab, node, "tensor size read as a Python int")
    return None


for _fn in (operator.mul, operator.add, operator.sub, operator.floordiv, operator.truediv,
            operator.mod, operator.neg, operator.eq, operator.ne, operator.lt, operator.le,
            operator.gt, operator.ge, math.ceil, math.floor, math.sqrt, math.trunc,
            torch.sym_float, torch.sym_int, torch.sym_max, torch.sym_min, torch.sym_not):
    register_op(_fn)(lambda an, node: None)


@register_op(aten._assert_tensor_metadata, aten._assert_scalar, aten.sym_constrain_range_for_size,
             aten.sym_constrain_range, aten._assert_async, aten._functional_assert_async)
def _assert(an: Analysis, node: fx.Node) -> Label:
    return None


@register_op(operator.getitem)
def _getitem(an: Analysis, node: fx.Node) -> Label:
    lab = an.label(node.args[0])
    if isinstance(lab, list) and lab and isinstance(lab[0], list):
        return lab[node.args[1]]
    if isinstance(lab, list) and not lab:
        return an.fixed_label(node.meta.get("val"))
    if lab is None:
        return an.fixed_label(node.meta.get("val"))
    return an.unsupported(node, "indexing a tensor with [] in the graph")


@register_op(*_packets("zeros", "ones", "full", "empty", "arange", "scalar_tensor", "new_zeros",
                      "new_ones", "new_full", "new_empty", "tensor", "rand", "randn", "linspace",
                      "eye", "empty_strided"))
def _factory(an: Analysis, node: fx.Node) -> Label:
    return an.fixed_label(node.meta.get("val"))


# -- normalisation ----------------------------------------------------------------------------

@register_op(aten.batch_norm, aten.instance_norm)
def _batch_norm(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node, 0)
    c = x[1] if len(x) > 1 else x[0]
    for i in range(1, 5):
        arg = node_arg(node, i, "")
        if isinstance(arg, fx.Node):
            an.unify(arg_label(an, node, i)[0], c, node)
    return list(x)


@register_op(aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit,
             aten.native_batch_norm)
def _native_batch_norm(an: Analysis, node: fx.Node) -> Label:
    out = _batch_norm(an, node)
    rest = an.fixed_label(node.meta.get("val"))
    return [out] + list(rest[1:])


@register_op(aten.layer_norm, aten.rms_norm)
def _layer_norm(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node, 0)
    shape = list(node.args[1])
    k = len(shape)
    for i in (2, 3) if node.target.overloadpacket is aten.layer_norm else (2,):
        arg = node_arg(node, i, "")
        if isinstance(arg, fx.Node):
            w = arg_label(an, node, i)
            for j in range(k):
                an.unify(w[j], x[len(x) - k + j], node)
    dims = x[len(x) - k:]
    if any(an.has_var(an.resolve(s)) for s in dims):
        def rewrite(builder: Any, n: fx.Node, args: tuple, kwargs: dict, dims: list = dims) -> tuple:
            args = list(args)
            args[1] = [builder.size_of(s) for s in dims]
            return n.target, tuple(args), kwargs
        an.rewrites[node] = rewrite
    return list(x)


@register_op(aten.native_layer_norm)
def _native_layer_norm(an: Analysis, node: fx.Node) -> Label:
    out = _layer_norm(an, node)
    rest = an.fixed_label(node.meta.get("val"))
    return [out] + list(rest[1:])


@register_op(aten.group_norm)
def _group_norm(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node, 0)
    groups = node.args[1]
    c = x[1]
    size = an.size(c)
    if groups > 1:
        an.unify(c, Prod((Fixed(groups), an.axes.new(size // groups))), node)
    for i in (2, 3):
        arg = node_arg(node, i, "")
        if isinstance(arg, fx.Node):
            an.unify(arg_label(an, node, i)[0], c, node)
    return list(x)


# -- reductions and softmax -------------------------------------------------------------------

def _reduce(an: Analysis, node: fx.Node, kind: str, dim_at: int = 1) -> Label:
    """A reduction whose ``dim`` is argument ``dim_at`` and ``keepdim`` the next one."""
    x = arg_label(an, node, 0)
    dims = node_arg(node, dim_at, "dim")
    if dims is None or dims == []:
        dims = list(range(len(x)))
    if isinstance(dims, int):
        dims = [dims]
    dims = [d % len(x) for d in dims] if x else []
    keep = bool(node_arg(node, dim_at + 1, "keepdim", False))
    for d in dims:
        if not an.has_var(an.resolve(x[d])):
            continue
        if kind in ("sum", "mean"):
            an.contract(node, 0, d, mean=kind == "mean")
        elif kind == "pin":
            an.pin(x[d], node, f"{node.target} over channels")
    out = [Fixed(1) if i in dims else s for i, s in enumerate(x)] if keep else [
        s for i, s in enumerate(x) if i not in dims]
    return out


@register_op(aten.sum)
def _sum(an: Analysis, node: fx.Node) -> Label:
    return _reduce(an, node, "sum")


@register_op(aten.mean)
def _mean(an: Analysis, node: fx.Node) -> Label:
    return _reduce(an, node, "mean")


@register_op(aten.amax, aten.amin, aten.var, aten.std, aten.var_mean, aten.std_mean)
def _reduce_free(an: Analysis, node: fx.Node) -> Label:
    out = _reduce(an, node, "free")
    if node.target.overloadpacket in (aten.var_mean, aten.std_mean):
        return [out, list(out)]
    return out


@register_op(aten.max, aten.min)
def _max(an: Analysis, node: fx.Node) -> Label:
    if len(node.args) == 1:
        return _reduce(an, node, "free")
    if isinstance(node.args[1], fx.Node):
        return _broadcast(an, node)
    out = _reduce(an, node, "pin")
    return [out, list(out)]


@register_op(*_packets("argmax", "argmin", "logsumexp", "prod", "all", "any"))
def _reduce_pin(an: Analysis, node: fx.Node) -> Label:
    return _reduce(an, node, "pin")


@register_op(aten.linalg_vector_norm, aten.norm)
def _norm(an: Analysis, node: fx.Node) -> Label:
    # (self, ord / p, dim, keepdim): the order comes before the dims
    return _reduce(an, node, "pin", dim_at=2)


@register_op(aten.cumsum, aten.cumprod, aten.sort, aten.argsort, aten.topk)
def _along(an: Analysis, node: fx.Node) -> Label:
    """Ops that keep every dimension but mix (or reorder) the values along one."""
    x = arg_label(an, node, 0)
    packet = node.target.overloadpacket
    dim_at = 2 if packet is aten.topk else 1
    d = node_arg(node, dim_at, "dim", -1 if packet in (aten.sort, aten.argsort, aten.topk) else None)
    d %= len(x)
    an.pin(x[d], node, f"{node.target} along channels")
    val = node.meta.get("val")

    def out(v: torch.Tensor) -> list[Struct]:  # topk keeps k of the values
        n = hint(v.shape[d])
        return [s if i != d or an.size(s) == n else Fixed(n) for i, s in enumerate(x)]

    return [out(v) for v in val] if isinstance(val, (list, tuple)) else out(val)


@register_op(aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax)
def _softmax(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node, 0)
    an.pin(x[node.args[1] % len(x)], node, "softmax over channels")
    return list(x)


# -- spatial ops ------------------------------------------------------------------------------

def _spatial(an: Analysis, node: fx.Node, k: int) -> Label:
    x = arg_label(an, node, 0)
    for d in x[len(x) - k:]:  # pooled, resampled or padded positions: they never change size
        an.pin(d, node, f"a spatial axis of {node.target}")
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        shape = [hint(s) for s in val[0].shape]
        out = list(x[: len(x) - k]) + [Fixed(s) for s in shape[len(x) - k:]]
        return [out] + [list(out) for _ in val[1:]]
    shape = an.shape(node)
    return list(x[: len(x) - k]) + [Fixed(s) for s in shape[len(x) - k:]]


_SPATIAL = {
    1: _packets("max_pool1d", "avg_pool1d", "adaptive_avg_pool1d", "adaptive_max_pool1d",
                "max_pool1d_with_indices", "upsample_nearest1d", "upsample_linear1d",
                "_upsample_nearest_exact1d", "reflection_pad1d", "replication_pad1d"),
    2: _packets("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
                "max_pool2d_with_indices", "upsample_nearest2d", "upsample_bilinear2d",
                "upsample_bicubic2d", "_upsample_nearest_exact2d", "_upsample_bilinear2d_aa",
                "_upsample_bicubic2d_aa", "reflection_pad2d", "replication_pad2d"),
    3: _packets("max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d",
                "max_pool3d_with_indices", "upsample_nearest3d", "upsample_trilinear3d",
                "_upsample_nearest_exact3d", "reflection_pad3d", "replication_pad3d"),
}
for _k, _ops in _SPATIAL.items():
    register_op(*_ops)(lambda an, node, k=_k: _spatial(an, node, k))


@register_op(aten.constant_pad_nd, aten.pad)
def _pad(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node, 0)
    pad = list(node.args[1])
    k = len(pad) // 2
    for i in range(k):
        if pad[2 * i] or pad[2 * i + 1]:
            an.pin(x[len(x) - 1 - i], node, "padding along this dimension")
    shape = an.shape(node)
    return [s if an.size(s) == shape[i] else Fixed(shape[i]) for i, s in enumerate(x)]


@register_op(aten.pixel_shuffle)
def _pixel_shuffle(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node, 0)
    r = node.args[1]
    c = len(x) - 3
    an.pin(x[c + 1:], node, "a spatial axis of a pixel shuffle")
    inner = an.axes.new(an.size(x[c]) // (r * r))
    an.unify(x[c], Prod((inner, Fixed(r * r))), node)
    shape = an.shape(node)
    return list(x[:c]) + [inner] + [Fixed(s) for s in shape[c + 1:]]


@register_op(aten.pixel_unshuffle)
def _pixel_unshuffle(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node, 0)
    r = node.args[1]
    c = len(x) - 3
    an.pin(x[c + 1:], node, "a spatial axis of a pixel unshuffle")
    shape = an.shape(node)
    return list(x[:c]) + [Prod((x[c], Fixed(r * r)))] + [Fixed(s) for s in shape[c + 1:]]


@register_op(aten.channel_shuffle, aten.native_channel_shuffle)
def _channel_shuffle(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node, 0)
    g = node.args[1]
    inner = an.axes.new(an.size(x[1]) // g)
    an.unify(x[1], Prod((Fixed(g), inner)), node)
    return [x[0], Prod((inner, Fixed(g)))] + list(x[2:])


@register_op(aten.roll, aten.flip, aten.fliplr, aten.flipud)
def _roll(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node, 0)
    packet = node.target.overloadpacket
    dims = {aten.roll: lambda: node.args[2] if len(node.args) > 2 else None,
            aten.flip: lambda: node.args[1], aten.fliplr: lambda: [1],
            aten.flipud: lambda: [0]}[packet]()
    dims = [dims] if isinstance(dims, int) else list(dims or range(len(x)))
    for d in dims:
        an.pin(x[d], node, f"{node.target} along channels")
    return list(x)
