"""Handlers for linear maps: linear, convolutions (plain, transposed, grouped, depthwise),
matmul/bmm/addmm, the outer product, einsum, scaled dot-product attention and embedding (see
:mod:`.analysis`).

These are the ops that contract a channel axis against a weight: each handler unifies the
input's channel axis with the weight's, records the integration (or contraction) over it, and
returns the output label; a depthwise convolution's ``groups`` and an attention's default
``scale`` are rewritten from the current sizes. The other handlers are in :mod:`.ops` and
:mod:`.shape`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx

from ..analysis import Analysis, Label
from ..labels import Fixed, Prod, Struct
from .core import arg_label, node_arg
from ..registry import register_op

aten = torch.ops.aten

__all__: list[str] = []


@register_op(aten.linear)
def _linear(an: Analysis, node: fx.Node) -> Label:
    x, w = arg_label(an, node, 0), arg_label(an, node, 1)
    an.unify(x[-1], w[-1], node)
    an.integrate(node, 1, len(w) - 1, 0, len(x) - 1)
    bias = node_arg(node, 2, "bias")
    if isinstance(bias, fx.Node):
        an.unify(arg_label(an, node, 2)[0], w[0], node)
    return list(x[:-1]) + [w[0]] if len(w) == 2 else list(x[:-1])


def _conv(an: Analysis, node: fx.Node, transposed: bool, groups: int, bias: Any) -> Label:
    x, w = arg_label(an, node, 0), arg_label(an, node, 1)
    spatial = len(w) - 2
    c = len(x) - spatial - 1
    for k in w[2:]:
        an.pin(k, node, "kernel taps")
    for d in x[c + 1:]:  # positions the kernel slides over, however they got there (a transpose)
        an.pin(d, node, "a spatial axis of a convolution")
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
    return _conv(an, node, False, node_arg(node, 6, "groups", 1), node_arg(node, 2, "bias"))


@register_op(aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)
def _conv_t(an: Analysis, node: fx.Node) -> Label:
    return _conv(an, node, True, node_arg(node, 6, "groups", 1), node_arg(node, 2, "bias"))


@register_op(aten.convolution)
def _convolution(an: Analysis, node: fx.Node) -> Label:
    return _conv(an, node, bool(node.args[6]), node.args[8], node.args[2])


def _matmul_like(an: Analysis, node: fx.Node, a_i: int, b_i: int) -> Label:
    a, b = arg_label(an, node, a_i), arg_label(an, node, b_i)
    a1, b1 = len(a) == 1, len(b) == 1
    ka = a[-1]
    kb = b[0] if b1 else b[-2]
    an.unify(ka, kb, node)
    if an.has_var(an.resolve(ka)):
        if an.traced.source.get(node.args[b_i]) is not None or an.param_source(node.args[b_i], 0) is not None:
            an.integrate(node, b_i, 0 if b1 else len(b) - 2, a_i, len(a) - 1)
        else:  # between activations (``q @ k.T``): a per-head feature dimension
            an.contract(node, a_i, len(a) - 1)
            an.head_dim(ka)
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


@register_op(*[getattr(aten, n) for n in ("outer", "ger") if hasattr(aten, n)])
def _outer(an: Analysis, node: fx.Node) -> Label:
    """``outer(a, b)[i, j] = a[i] * b[j]``: the first input's axis is the output's rows, the
    second's its columns; nothing is summed. A buffer or constant operand (the inverse
    frequencies of RoPE, ``outer(positions, inv_freq)``) is a table of frequencies or positions,
    not channels: its axis stays at full size. A parameter's or an activation's axis goes
    through."""
    labs = [arg_label(an, node, 0), arg_label(an, node, 1)]
    for i, lab in enumerate(labs):
        name = an.traced.source.get(node.args[i])
        if name is not None and name not in an.traced.trainable:
            an.pin(lab, node, f"'{name}' is a table of positions or frequencies in an outer product")
    return [labs[0][0], labs[1][0]]


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
    activations = all(an.param_source(op, 0) is None for op in operands)
    for ch, (k, d) in first_use.items():
        if ch not in rhs and an.has_var(an.resolve(letters[ch])):
            # scale the first operand holding the summed channels
            an.contractions.append(_contraction(node, k, d))
            if activations:  # ``einsum('bhqd,bhkd->bhqk', q, k)``: a per-head feature dimension
                an.head_dim(letters[ch])
    shape = an.shape(node) or []
    return [letters.get(ch, Fixed(shape[i])) for i, ch in enumerate(rhs)]


def _contraction(node: fx.Node, operand: int, dim: int) -> Any:
    from ..analysis import Contraction
    return Contraction(node, -1 - operand, dim)  # negative arg: index into the operand list


@register_op(aten.scaled_dot_product_attention)
def _sdpa(an: Analysis, node: fx.Node) -> Label:
    q, k, v = arg_label(an, node, 0), arg_label(an, node, 1), arg_label(an, node, 2)
    an.unify(q[-1], k[-1], node)
    an.unify(k[-2], v[-2], node)
    an.head_dim(q[-1])
    an.head_dim(v[-1])
    gqa = bool(node_arg(node, 7, "enable_gqa", False))
    for i in range(1, min(len(q), len(k), len(v)) - 1):
        dims = [lab[-1 - i] for lab in (q, k, v) if an.size(lab[-1 - i]) != 1]
        if gqa and i == 2 and an.size(q[-3]) != an.size(k[-3]):
            # grouped-query attention: query head h uses key/value head h // (Hq / Hkv)
            an.unify(k[-3], v[-3], node)
            rep = an.size(q[-3]) // an.size(k[-3])
            an.unify(q[-3], Prod((k[-3], Fixed(rep))), node)
            continue
        for s in dims[1:]:
            an.unify(dims[0], s, node)
    an.contract(node, 0, len(q) - 1)
    if node_arg(node, 6, "scale") is None:
        full = an.size(q[-1])

        def rewrite(builder: Any, n: fx.Node, args: tuple, kwargs: dict, full: int = full) -> tuple:
            kwargs = dict(kwargs)
            kwargs["scale"] = 1.0 / math.sqrt(full)
            n.meta["torchinn_pinned_scale"] = True  # the network's own call used the default scale
            return n.target, args, kwargs

        an.rewrites[node] = rewrite
    return list(q[:-1]) + [v[-1]]


@register_op(aten.embedding)
def _embedding(an: Analysis, node: fx.Node) -> Label:
    w, idx = arg_label(an, node, 0), arg_label(an, node, 1)
    an.pin(w[0], node, "embedding rows (token ids)")
    return list(idx) + [w[1]]
