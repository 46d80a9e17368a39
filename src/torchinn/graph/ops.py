"""Handlers: what each ATen operation does to channel axes (see :mod:`.analysis`).

Grouped by kind: pass-through and elementwise ops, linear maps (linear, convolutions, matmul,
attention), normalisations, spatial ops, and shape ops (view, cat, split, ...). A handler
returns the output label and may register a rewrite for arguments that hold channel counts.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx

from .analysis import Analysis, Label, hint, register_op
from .labels import Fixed, Prod, Struct

aten = torch.ops.aten

__all__: list[str] = []


def _packets(*names: str) -> list[Any]:
    """The ATen op packets of these names that exist in this torch version."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


def _lab(an: Analysis, node: fx.Node, i: int = 0) -> list[Struct]:
    lab = an.tensor_label(node.args[i])
    if lab is None:
        raise RuntimeError(f"node '{node.name}' ({node.target}): argument {i} has no tensor label")
    return lab


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


# -- pass-through and elementwise -----------------------------------------------------------

_IDENTITY = _packets(
    "clone", "contiguous", "alias", "detach", "_to_copy", "to", "type_as", "lift_fresh_copy",
    "dropout", "dropout_", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh",
    "tanh_", "hardtanh", "hardtanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "elu", "elu_", "leaky_relu", "leaky_relu_", "selu", "celu", "softplus", "mish", "mish_",
    "neg", "abs", "exp", "exp_", "log", "sqrt", "rsqrt", "square", "sin", "cos", "erf",
    "reciprocal", "sign", "logical_not", "bitwise_not", "clamp", "clamp_", "clamp_min",
    "clamp_max", "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like",
    "log_sigmoid", "logit", "round", "floor", "ceil", "trunc", "frac", "nan_to_num", "threshold",
    "isnan", "isinf", "isfinite", "bitwise_not", "fill", "fill_",
)


@register_op(*_IDENTITY)
def _identity(an: Analysis, node: fx.Node) -> Label:
    lab = an.tensor_label(node.args[0])
    return list(lab) if lab is not None else an.fixed_label(node.meta.get("val"))


_BROADCAST = _packets(
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "pow", "maximum",
    "minimum", "where", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
    "logical_xor", "bitwise_and", "bitwise_or", "addcmul", "addcdiv", "lerp", "masked_fill",
    "masked_fill_", "fmod", "remainder", "floor_divide", "copy_", "copy", "atan2", "hypot", "xlogy",
)


@register_op(*_BROADCAST)
def _broadcast(an: Analysis, node: fx.Node) -> Label:
    return an.broadcast(node, list(node.args) + list(node.kwargs.values()))


@register_op(aten.prelu, aten._prelu_kernel)
def _prelu(an: Analysis, node: fx.Node) -> Label:
    x, w = _lab(an, node, 0), _lab(an, node, 1)
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


# -- linear maps ------------------------------------------------------------------------------

@register_op(aten.linear)
def _linear(an: Analysis, node: fx.Node) -> Label:
    x, w = _lab(an, node, 0), _lab(an, node, 1)
    an.unify(x[-1], w[-1], node)
    an.integrate(node, 1, len(w) - 1, 0, len(x) - 1)
    bias = _arg(node, 2, "bias")
    if isinstance(bias, fx.Node):
        an.unify(_lab(an, node, 2)[0], w[0], node)
    return list(x[:-1]) + [w[0]] if len(w) == 2 else list(x[:-1])


def _conv(an: Analysis, node: fx.Node, transposed: bool, groups: int, bias: Any) -> Label:
    x, w = _lab(an, node, 0), _lab(an, node, 1)
    spatial = len(w) - 2
    c = len(x) - spatial - 1
    for k in w[2:]:
        an.pin(k, node, "kernel taps")
    shape = an.shape(node) or []
    out = list(x[:c]) + [Fixed(0)] + [Fixed(s) for s in shape[c + 1:]]
    cin = an.size(x[c])
    if transposed:
        w_in, w_out = w[0], w[1]
        per_group_out = an.size(w_out)
    else:
        w_out, w_in = w[0], w[1]
        per_group_out = an.size(w_out) // groups
    if groups == 1:
        an.unify(x[c], w_in, node)
        an.integrate(node, 1, 0 if transposed else 1, 0, c)
        out[c] = w_out
    elif cin == groups:  # depthwise (with an optional channel multiplier)
        if transposed:
            an.unify(w_in, x[c], node)
        else:
            an.pin(w_in, node, "depthwise kernel")
        mult = per_group_out
        channel_out = Prod((x[c], Fixed(mult)))
        an.unify(w_out if not transposed else Prod((w_in, w_out)), channel_out, node)
        out[c] = channel_out
        axis = x[c]

        def rewrite(builder: Any, n: fx.Node, args: tuple, kwargs: dict, axis: Struct = axis) -> tuple:
            args = list(args)
            index = 8 if n.target.overloadpacket is aten.convolution else 6
            while len(args) <= index:
                args.append(_DEFAULTS[n.target.overloadpacket][len(args)])
            args[index] = builder.size_of(axis)
            return n.target, tuple(args), kwargs

        an.rewrites[node] = rewrite
    else:  # grouped: channels are (groups x channels per group)
        per_in = cin // groups
        inner_in = an.axes.new(per_in)
        an.unify(x[c], Prod((Fixed(groups), inner_in)), node)
        if transposed:
            an.unify(w_in, x[c], node)
            an.integrate(node, 1, 0, 0, c)
            channel_out = Prod((Fixed(groups), w_out))
        else:
            an.unify(w_in, inner_in, node)
            an.integrate(node, 1, 1, 0, c)
            inner_out = an.axes.new(per_group_out)
            an.unify(w_out, Prod((Fixed(groups), inner_out)), node)
            channel_out = Prod((Fixed(groups), inner_out))
        out[c] = channel_out
    if isinstance(bias, fx.Node):
        an.unify(an.tensor_label(bias)[0], out[c], node)
    return out


_DEFAULTS = {
    aten.conv1d: [None, None, None, [1], [0], [1], 1],
    aten.conv2d: [None, None, None, [1, 1], [0, 0], [1, 1], 1],
    aten.conv3d: [None, None, None, [1, 1, 1], [0, 0, 0], [1, 1, 1], 1],
    aten.conv_transpose1d: [None, None, None, [1], [0], [0], 1, [1]],
    aten.conv_transpose2d: [None, None, None, [1, 1], [0, 0], [0, 0], 1, [1, 1]],
    aten.conv_transpose3d: [None, None, None, [1, 1, 1], [0, 0, 0], [0, 0, 0], 1, [1, 1, 1]],
}


@register_op(aten.conv1d, aten.conv2d, aten.conv3d)
def _conv_fwd(an: Analysis, node: fx.Node) -> Label:
    return _conv(an, node, False, _arg(node, 6, "groups", 1), _arg(node, 2, "bias"))


@register_op(aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)
def _conv_t(an: Analysis, node: fx.Node) -> Label:
    return _conv(an, node, True, _arg(node, 6, "groups", 1), _arg(node, 2, "bias"))


@register_op(aten.convolution)
def _convolution(an: Analysis, node: fx.Node) -> Label:
    return _conv(an, node, bool(node.args[6]), node.args[8], node.args[2])


def _matmul_like(an: Analysis, node: fx.Node, a_i: int, b_i: int) -> Label:
    a, b = _lab(an, node, a_i), _lab(an, node, b_i)
    a1, b1 = len(a) == 1, len(b) == 1
    ka = a[-1]
    kb = b[0] if b1 else b[-2]
    an.unify(ka, kb, node)
    if an.has_var(an.resolve(ka)):
        if an.traced.source.get(node.args[b_i]) is not None or an.param_source(node.args[b_i], 0) is not None:
            an.integrate(node, b_i, 0 if b1 else len(b) - 2, a_i, len(a) - 1)
        else:
            an.contract(node, a_i, len(a) - 1)
    batch_a = [] if a1 else a[:-2]
    batch_b = [] if b1 else b[:-2]
    shape = an.shape(node) or []
    nb = len(shape) - (0 if a1 else 1) - (0 if b1 else 1)
    batch: list[Struct] = []
    for i in range(nb):
        sa = batch_a[len(batch_a) - nb + i] if len(batch_a) - nb + i >= 0 else None
        sb = batch_b[len(batch_b) - nb + i] if len(batch_b) - nb + i >= 0 else None
        picks = [s for s in (sa, sb) if s is not None and an.size(s) == shape[i] and shape[i] != 1]
        for s in picks[1:]:
            an.unify(picks[0], s, node)
        batch.append(picks[0] if picks else Fixed(shape[i]))
    out = batch + ([] if a1 else [a[-2]]) + ([] if b1 else [b[-1]])
    return out


@register_op(aten.matmul, aten.bmm, aten.mm)
def _matmul(an: Analysis, node: fx.Node) -> Label:
    return _matmul_like(an, node, 0, 1)


@register_op(aten.addmm, aten.baddbmm, aten.addbmm)
def _addmm(an: Analysis, node: fx.Node) -> Label:
    out = _matmul_like(an, node, 1, 2)
    bias = an.tensor_label(node.args[0])
    if bias is not None:
        off = len(out) - len(bias)
        for i, s in enumerate(bias):
            if an.size(s) == an.size(out[off + i]) and an.size(s) != 1:
                an.unify(s, out[off + i], node)
    return out


@register_op(aten.einsum)
def _einsum(an: Analysis, node: fx.Node) -> Label:
    eq, operands = node.args[0], node.args[1]
    lhs, _, rhs = eq.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if "..." in eq or "->" not in eq:
        return an.unsupported(node, f"einsum '{eq}' with '...' or an implicit output")
    letters: dict[str, Struct] = {}
    first_use: dict[str, tuple[int, int]] = {}
    for k, (term, op) in enumerate(zip(terms, operands)):
        lab = an.tensor_label(op)
        for d, ch in enumerate(term):
            s = lab[d]
            if an.size(s) == 1:
                continue
            if ch in letters:
                an.unify(letters[ch], s, node)
            else:
                letters[ch] = s
                first_use[ch] = (k, d)
    for ch, (k, d) in first_use.items():
        if ch not in rhs and an.has_var(an.resolve(letters[ch])):
            # scale the first operand holding the summed channels
            an.contractions.append(_contraction(node, k, d))
    shape = an.shape(node) or []
    return [letters.get(ch, Fixed(shape[i])) for i, ch in enumerate(rhs)]


def _contraction(node: fx.Node, operand: int, dim: int) -> Any:
    from .analysis import Contraction
    return Contraction(node, -1 - operand, dim)  # negative arg: index into the operand list


@register_op(aten.scaled_dot_product_attention)
def _sdpa(an: Analysis, node: fx.Node) -> Label:
    q, k, v = _lab(an, node, 0), _lab(an, node, 1), _lab(an, node, 2)
    an.unify(q[-1], k[-1], node)
    an.unify(k[-2], v[-2], node)
    for i in range(1, min(len(q), len(k), len(v)) - 1):
        dims = [lab[-1 - i] for lab in (q, k, v) if an.size(lab[-1 - i]) != 1]
        for s in dims[1:]:
            an.unify(dims[0], s, node)
    an.contract(node, 0, len(q) - 1)
    if _arg(node, 6, "scale") is None:
        full = an.size(q[-1])

        def rewrite(builder: Any, n: fx.Node, args: tuple, kwargs: dict, full: int = full) -> tuple:
            kwargs = dict(kwargs)
            kwargs["scale"] = 1.0 / math.sqrt(full)
            return n.target, args, kwargs

        an.rewrites[node] = rewrite
    return list(q[:-1]) + [v[-1]]


@register_op(aten.embedding)
def _embedding(an: Analysis, node: fx.Node) -> Label:
    w, idx = _lab(an, node, 0), _lab(an, node, 1)
    an.pin(w[0], node, "embedding rows (token ids)")
    return list(idx) + [w[1]]


# -- normalisation ----------------------------------------------------------------------------

@register_op(aten.batch_norm, aten.instance_norm)
def _batch_norm(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node, 0)
    c = x[1] if len(x) > 1 else x[0]
    for i in range(1, 5):
        arg = _arg(node, i, "")
        if isinstance(arg, fx.Node):
            an.unify(_lab(an, node, i)[0], c, node)
    return list(x)


@register_op(aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit,
             aten.native_batch_norm)
def _native_batch_norm(an: Analysis, node: fx.Node) -> Label:
    out = _batch_norm(an, node)
    rest = an.fixed_label(node.meta.get("val"))
    return [out] + list(rest[1:])


@register_op(aten.layer_norm, aten.rms_norm)
def _layer_norm(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node, 0)
    shape = list(node.args[1])
    k = len(shape)
    for i in (2, 3) if node.target.overloadpacket is aten.layer_norm else (2,):
        arg = _arg(node, i, "")
        if isinstance(arg, fx.Node):
            w = _lab(an, node, i)
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
    x = _lab(an, node, 0)
    groups = node.args[1]
    c = x[1]
    size = an.size(c)
    if groups > 1:
        an.unify(c, Prod((Fixed(groups), an.axes.new(size // groups))), node)
    for i in (2, 3):
        arg = _arg(node, i, "")
        if isinstance(arg, fx.Node):
            an.unify(_lab(an, node, i)[0], c, node)
    return list(x)


# -- reductions and softmax -------------------------------------------------------------------

def _reduce(an: Analysis, node: fx.Node, kind: str) -> Label:
    x = _lab(an, node, 0)
    dims = _arg(node, 1, "dim")
    if dims is None or dims == []:
        dims = list(range(len(x)))
    if isinstance(dims, int):
        dims = [dims]
    dims = [d % len(x) for d in dims] if x else []
    keep = bool(_arg(node, 2, "keepdim", False))
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


@register_op(*_packets("argmax", "argmin", "logsumexp", "prod", "cumsum", "cumprod",
                      "linalg_vector_norm", "norm", "all", "any", "sort", "topk", "argsort"))
def _reduce_pin(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node, 0)
    if node.target.overloadpacket in (aten.cumsum, aten.cumprod):
        an.pin(x[node.args[1] % len(x)], node, f"{node.target} along channels")
        return list(x)
    return _reduce(an, node, "pin")


@register_op(aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax)
def _softmax(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node, 0)
    an.pin(x[node.args[1] % len(x)], node, "softmax over channels")
    return list(x)


# -- spatial ops ------------------------------------------------------------------------------

def _spatial(an: Analysis, node: fx.Node, k: int) -> Label:
    x = _lab(an, node, 0)
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
    x = _lab(an, node, 0)
    pad = list(node.args[1])
    k = len(pad) // 2
    for i in range(k):
        if pad[2 * i] or pad[2 * i + 1]:
            an.pin(x[len(x) - 1 - i], node, "padding along this dimension")
    shape = an.shape(node)
    return [s if an.size(s) == shape[i] else Fixed(shape[i]) for i, s in enumerate(x)]


@register_op(aten.pixel_shuffle)
def _pixel_shuffle(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node, 0)
    r = node.args[1]
    c = len(x) - 3
    inner = an.axes.new(an.size(x[c]) // (r * r))
    an.unify(x[c], Prod((inner, Fixed(r * r))), node)
    shape = an.shape(node)
    return list(x[:c]) + [inner] + [Fixed(s) for s in shape[c + 1:]]


@register_op(aten.pixel_unshuffle)
def _pixel_unshuffle(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node, 0)
    r = node.args[1]
    c = len(x) - 3
    shape = an.shape(node)
    return list(x[:c]) + [Prod((x[c], Fixed(r * r)))] + [Fixed(s) for s in shape[c + 1:]]


@register_op(aten.channel_shuffle, aten.native_channel_shuffle)
def _channel_shuffle(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node, 0)
    g = node.args[1]
    inner = an.axes.new(an.size(x[1]) // g)
    an.unify(x[1], Prod((Fixed(g), inner)), node)
    return [x[0], Prod((inner, Fixed(g)))] + list(x[2:])


@register_op(aten.roll, aten.flip, aten.fliplr, aten.flipud)
def _roll(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node, 0)
    packet = node.target.overloadpacket
    dims = {aten.roll: lambda: node.args[2] if len(node.args) > 2 else None,
            aten.flip: lambda: node.args[1], aten.fliplr: lambda: [1],
            aten.flipud: lambda: [0]}[packet]()
    dims = [dims] if isinstance(dims, int) else list(dims or range(len(x)))
    for d in dims:
        an.pin(x[d], node, f"{node.target} along channels")
    return list(x)
