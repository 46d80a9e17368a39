"""Handlers for shape operations: view/reshape/flatten, permutations, expand, repeat and
repeat_interleave, cat/stack (see
:mod:`..analysis`; split, chunk, slicing and indexing are in :mod:`.slicing`).

``view`` and ``reshape`` are matched factor by factor (row-major): merging keeps each factor's
axis (``flatten`` of channels x positions), and splitting an axis makes each factor an axis; once
the graph is seen, an attention split keeps its heads and fixes the head size, any other split
keeps its innermost factor (:func:`~.analysis.split_heads`). Slicing or
splitting a channel axis cuts it into independent axes (``chunk`` of a fused projection, channel
split). Arguments holding channel counts are rewritten from the current sizes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..analysis import Analysis, Label, hint
from ..labels import Cat, Fixed, Prod, Struct, Var  # noqa: F401
from ..registry import register_op
from .core import arg_label, node_arg, pin_fixed

aten = torch.ops.aten

__all__: list[str] = []


# -- view / reshape ---------------------------------------------------------------------------

def reshape_labels(an: Analysis, node: fx.Node, x: list[Struct], out_shape: list[int]) -> Label:
    """Labels of ``x`` viewed as ``out_shape`` (row-major), splitting axes where needed."""
    atoms: list[Struct] = []
    for s in x:
        atoms.extend(a for a in an.axes.atoms(s) if an.size(a) != 1)
    out: list[Struct] = []
    i = 0
    for size in out_shape:
        if size == 1:
            out.append(Fixed(1))
            continue
        parts: list[Struct] = []
        prod = 1
        while prod < size:
            if i >= len(atoms) or size % prod:
                return pin_fixed(an, node, x, "a reshape that does not keep channels whole")
            a = an.resolve(atoms[i])
            sa = an.size(a)
            if size % (prod * sa) == 0:
                parts.append(a)
                prod *= sa
                i += 1
                continue
            need = size // prod
            if sa % need:
                return pin_fixed(an, node, x, "a reshape that does not keep channels whole")
            if isinstance(a, Fixed):
                head, tail = Fixed(need), Fixed(sa // need)
            elif isinstance(a, Var):
                head, tail = an.axes.bind_split(a.axis, [need, sa // need])
            else:
                return pin_fixed(an, node, x, "a reshape that splits concatenated channels")
            parts.append(head)
            prod *= need
            atoms[i] = tail
        out.append(an.resolve(Prod(tuple(parts))) if len(parts) != 1 else parts[0])
    if any(an.size(a) != 1 for a in atoms[i:]):
        return pin_fixed(an, node, x, "a reshape that does not keep channels whole")
    return out


def _shape_rewrite(an: Analysis, node: fx.Node, arg_index: int, out: list[Struct]) -> None:
    if not any(an.has_var(an.resolve(s)) for s in out):
        return

    def rewrite(builder: Any, n: fx.Node, args: tuple, kwargs: dict, out: list = out) -> tuple:
        args = list(args)
        shape = list(args[arg_index])
        for j, s in enumerate(out):
            if j < len(shape) and not (isinstance(shape[j], int) and shape[j] == -1):
                shape[j] = builder.scale(shape[j], s)
        args[arg_index] = shape
        return n.target, tuple(args), kwargs

    an.rewrites[node] = rewrite


@register_op(aten.view, aten.reshape, aten._unsafe_view, aten.view_copy)
def _view(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node)
    if not isinstance(node.args[1], (list, tuple)):  # view(dtype)
        return list(x)
    out = reshape_labels(an, node, x, an.shape(node))
    if isinstance(out, list) and out and not isinstance(out[0], list):
        _shape_rewrite(an, node, 1, out)
    return out


@register_op(aten.flatten)
def _flatten(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node)
    if not x:
        return [Fixed(1)]
    start = (node.args[1] if len(node.args) > 1 else 0) % len(x)
    end = (node.args[2] if len(node.args) > 2 else -1) % len(x)
    merged = an.resolve(Prod(tuple(x[start:end + 1])))
    return list(x[:start]) + [merged] + list(x[end + 1:])


@register_op(aten.unflatten)
def _unflatten(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node)
    d = node.args[1] % len(x)
    shape = an.shape(node)
    k = len(node.args[2])
    inner = reshape_labels(an, node, [x[d]], shape[d:d + k])
    if not (isinstance(inner, list) and len(inner) == k and not isinstance(inner[0], list)):
        return inner
    out = list(x[:d]) + inner + list(x[d + 1:])
    if any(an.has_var(an.resolve(s)) for s in inner):
        def rewrite(builder: Any, n: fx.Node, args: tuple, kwargs: dict, inner: list = inner) -> tuple:
            args = list(args)
            args[2] = [v if isinstance(v, int) and v == -1 else builder.scale(v, s)
                       for v, s in zip(args[2], inner)]
            return n.target, tuple(args), kwargs
        an.rewrites[node] = rewrite
    return out


# -- permutations and size-1 dims --------------------------------------------------------------

def _ndim(node: fx.Node) -> int:
    val = node.meta.get("val")
    return val.ndim if isinstance(val, torch.Tensor) else 0


def _permute_dim(node: fx.Node, dim: int) -> int:
    perm = list(node.args[1])
    return perm[dim % len(perm)] % len(perm)


def _transpose_dim(node: fx.Node, dim: int) -> int:
    nd = _ndim(node)
    d0, d1, dim = node.args[1] % nd, node.args[2] % nd, dim % nd
    return d1 if dim == d0 else d0 if dim == d1 else dim


def _reversed_dim(node: fx.Node, dim: int) -> int:
    nd = _ndim(node)
    return nd - 1 - dim % nd


@register_op(aten.permute, view=_permute_dim)
def _permute(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node)
    return [x[d % len(x)] for d in node.args[1]]


@register_op(aten.transpose, aten.swapaxes, aten.swapdims, view=_transpose_dim)
def _transpose(an: Analysis, node: fx.Node) -> Label:
    x = list(arg_label(an, node))
    if not x:
        return x
    a, b = node.args[1] % len(x), node.args[2] % len(x)
    x[a], x[b] = x[b], x[a]
    return x


@register_op(aten.t, aten.numpy_T, view=_reversed_dim)
def _t(an: Analysis, node: fx.Node) -> Label:
    return list(reversed(arg_label(an, node)))


@register_op(aten.movedim)
def _movedim(an: Analysis, node: fx.Node) -> Label:
    x = list(arg_label(an, node))
    src, dst = node.args[1], node.args[2]
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    n = len(x)
    order = [None] * n
    for s, d in zip(src, dst):
        order[d % n] = s % n
    rest = iter(i for i in range(n) if i not in {s % n for s in src})
    return [x[o if o is not None else next(rest)] for o in order]


@register_op(aten.unsqueeze)
def _unsqueeze(an: Analysis, node: fx.Node) -> Label:
    x = list(arg_label(an, node))
    d = node.args[1] % (len(x) + 1)
    return x[:d] + [Fixed(1)] + x[d:]


@register_op(aten.squeeze)
def _squeeze(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node)
    if len(node.args) == 1:
        dims = [i for i, s in enumerate(x) if an.size(s) == 1]
    else:
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        dims = [d % len(x) for d in dims if an.size(x[d % len(x)]) == 1] if x else []
    return [s for i, s in enumerate(x) if i not in dims]


@register_op(aten.expand, aten.expand_copy, aten.broadcast_to)
def _expand(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node)
    sizes = list(node.args[1])
    shape = an.shape(node)
    off = len(sizes) - len(x)
    out: list[Struct] = []
    for j, target in enumerate(sizes):
        i = j - off
        if i >= 0 and (isinstance(target, int) and target == -1 or an.size(x[i]) == shape[j]):
            out.append(x[i])
        elif i >= 0 and an.size(x[i]) == 1 and an.param_source(node.args[0], i) is not None:
            # one element of a stored tensor repeated (onnx2torch's Max(x, 0)): any number of channels,
            # as in broadcasting; what the inputs make (a mask, positions) keeps its fixed size
            out.append(an.axes.new(shape[j]))
        else:
            out.append(Fixed(shape[j]))
    _shape_rewrite(an, node, 1, out)
    return out


@register_op(aten.repeat)
def _repeat(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node)
    reps = [hint(r) for r in node.args[1]]
    shape = an.shape(node)
    off = len(reps) - len(x)
    out: list[Struct] = []
    for j, r in enumerate(reps):
        i = j - off
        if i >= 0 and r == 1:
            out.append(x[i])
        else:
            if i >= 0:
                an.pin(x[i], node, "repeat along channels")
            out.append(Fixed(shape[j]))
    return out


def _interleave_count(an: Analysis, node: fx.Node) -> int | None:
    """How many times ``repeat_interleave`` repeats every element, if that is one count: an int,
    or a one-element tensor of counts that is a constant of the network (a buffer)."""
    repeats = node.args[1]
    if not isinstance(repeats, fx.Node) or not isinstance(repeats.meta.get("val"), torch.Tensor):
        return hint(repeats)
    an.pin(an.tensor_label(repeats), node, "the counts of repeat_interleave")
    name = an.traced.source.get(repeats)
    counts = an.traced.tensors.get(name) if name is not None else None
    return int(counts.flatten()[0]) if isinstance(counts, torch.Tensor) and counts.numel() == 1 else None


@register_op(aten.repeat_interleave)
def _repeat_interleave(an: Analysis, node: fx.Node) -> Label:
    """``repeat_interleave(x, r, dim)``: element ``i`` of ``dim`` becomes elements ``i * r`` to
    ``i * r + r - 1``, so the output dimension is ``(x's dimension x r)`` row-major, the layout of
    ``x[:, :, None].expand(..., r, ...).reshape(...)`` (transformers' ``repeat_kv``): under
    grouped-query attention the query heads are ``(key/value heads x queries per key/value head)``
    and removing a key/value head removes its queries. Without ``dim`` the input is flattened
    first. A tensor of one count per element keeps those elements whole (its length is theirs)."""
    if node.target is aten.repeat_interleave.Tensor:  # repeat_interleave(counts): indices
        lab = an.tensor_label(node.args[0])
        return an.fixed_label(node.meta.get("val")) if lab is None else pin_fixed(
            an, node, lab, "the counts of repeat_interleave (its output is indices)")
    x = arg_label(an, node)
    d = node_arg(node, 2, "dim")
    d = d % len(x) if d is not None and x else None
    r = _interleave_count(an, node)
    if r is None:
        return pin_fixed(an, node, x if d is None else [x[d]], "repeat_interleave with a tensor of counts")
    out = [an.resolve(Prod(tuple(x) + (Fixed(r),)))] if d is None else (
        list(x[:d]) + [an.resolve(Prod((x[d], Fixed(r))))] + list(x[d + 1:]))
    k = 0 if d is None else d
    if node_arg(node, 3, "output_size") is not None and an.has_var(out[k]):
        def rewrite(builder: Any, n: fx.Node, args: tuple, kwargs: dict, s: Struct = out[k]) -> tuple:
            args, kwargs = list(args), dict(kwargs)
            if len(args) > 3:
                args[3] = builder.size_of(s)
            else:
                kwargs["output_size"] = builder.size_of(s)
            return n.target, tuple(args), kwargs
        an.rewrites[node] = rewrite
    return out


# -- cat / stack --------------------------------------------------------------------------------

@register_op(aten.cat, aten.concat, aten.concatenate)
def _cat(an: Analysis, node: fx.Node) -> Label:
    tensors = [t for t in node.args[0] if isinstance(t, fx.Node)]
    labs = [an.tensor_label(t) for t in tensors]
    labs = [lab for lab in labs if lab is not None and not (len(lab) == 1 and an.size(lab[0]) == 0)]
    if not labs:
        return an.fixed_label(node.meta.get("val"))
    nd = len(labs[0])
    d = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % nd
    out = list(labs[0])
    for lab in labs[1:]:
        for i in range(nd):
            if i != d:
                an.unify(out[i], lab[i], node)
    out[d] = an.resolve(Cat(tuple(lab[d] for lab in labs)))
    return out


@register_op(aten.stack)
def _stack(an: Analysis, node: fx.Node) -> Label:
    labs = [an.tensor_label(t) for t in node.args[0]]
    nd = len(labs[0])
    d = (node.args[1] if len(node.args) > 1 else 0) % (nd + 1)
    for lab in labs[1:]:
        for i in range(nd):
            an.unify(labs[0][i], lab[i], node)
    out = list(labs[0])
    return out[:d] + [Fixed(len(labs))] + out[d:]
