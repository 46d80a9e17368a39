"""Handlers for shape operations: view/reshape/flatten, permutations, expand, cat/stack,
split/chunk/unbind, slicing (see :mod:`.analysis`).

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
from ..registry import register_op, same_dim

aten = torch.ops.aten

__all__: list[str] = []

_BIG = 2**62


def _lab(an: Analysis, node: fx.Node, i: int = 0) -> list[Struct]:
    lab = an.tensor_label(node.args[i])
    if lab is None:
        raise RuntimeError(f"node '{node.name}' ({node.target}): argument {i} has no tensor label")
    return lab


def _fail(an: Analysis, node: fx.Node, lab: list[Struct], why: str) -> Label:
    an.pin(lab, node, why)
    return an.fixed_label(node.meta.get("val"))


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
                return _fail(an, node, x, "a reshape that does not keep channels whole")
            a = an.resolve(atoms[i])
            sa = an.size(a)
            if size % (prod * sa) == 0:
                parts.append(a)
                prod *= sa
                i += 1
                continue
            need = size // prod
            if sa % need:
                return _fail(an, node, x, "a reshape that does not keep channels whole")
            if isinstance(a, Fixed):
                head, tail = Fixed(need), Fixed(sa // need)
            elif isinstance(a, Var):
                head, tail = an.axes.bind_split(a.axis, [need, sa // need])
            else:
                return _fail(an, node, x, "a reshape that splits concatenated channels")
            parts.append(head)
            prod *= need
            atoms[i] = tail
        out.append(an.resolve(Prod(tuple(parts))) if len(parts) != 1 else parts[0])
    if any(an.size(a) != 1 for a in atoms[i:]):
        return _fail(an, node, x, "a reshape that does not keep channels whole")
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
    x = _lab(an, node)
    if not isinstance(node.args[1], (list, tuple)):  # view(dtype)
        return list(x)
    out = reshape_labels(an, node, x, an.shape(node))
    if isinstance(out, list) and out and not isinstance(out[0], list):
        _shape_rewrite(an, node, 1, out)
    return out


@register_op(aten.flatten)
def _flatten(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
    if not x:
        return [Fixed(1)]
    start = (node.args[1] if len(node.args) > 1 else 0) % len(x)
    end = (node.args[2] if len(node.args) > 2 else -1) % len(x)
    merged = an.resolve(Prod(tuple(x[start:end + 1])))
    return list(x[:start]) + [merged] + list(x[end + 1:])


@register_op(aten.unflatten)
def _unflatten(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
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
    x = _lab(an, node)
    return [x[d % len(x)] for d in node.args[1]]


@register_op(aten.transpose, aten.swapaxes, aten.swapdims, view=_transpose_dim)
def _transpose(an: Analysis, node: fx.Node) -> Label:
    x = list(_lab(an, node))
    if not x:
        return x
    a, b = node.args[1] % len(x), node.args[2] % len(x)
    x[a], x[b] = x[b], x[a]
    return x


@register_op(aten.t, aten.numpy_T, view=_reversed_dim)
def _t(an: Analysis, node: fx.Node) -> Label:
    return list(reversed(_lab(an, node)))


@register_op(aten.movedim)
def _movedim(an: Analysis, node: fx.Node) -> Label:
    x = list(_lab(an, node))
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
    x = list(_lab(an, node))
    d = node.args[1] % (len(x) + 1)
    return x[:d] + [Fixed(1)] + x[d:]


@register_op(aten.squeeze)
def _squeeze(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
    if len(node.args) == 1:
        dims = [i for i, s in enumerate(x) if an.size(s) == 1]
    else:
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        dims = [d % len(x) for d in dims if an.size(x[d % len(x)]) == 1] if x else []
    return [s for i, s in enumerate(x) if i not in dims]


@register_op(aten.expand, aten.expand_copy)
def _expand(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
    sizes = list(node.args[1])
    shape = an.shape(node)
    off = len(sizes) - len(x)
    out: list[Struct] = []
    for j, target in enumerate(sizes):
        i = j - off
        if i >= 0 and (isinstance(target, int) and target == -1 or an.size(x[i]) == shape[j]):
            out.append(x[i])
        else:
            out.append(Fixed(shape[j]))
    _shape_rewrite(an, node, 1, out)
    return out


@register_op(aten.repeat)
def _repeat(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
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


# -- split / chunk / unbind / slice --------------------------------------------------------------

def split_struct(an: Analysis, node: fx.Node, s: Struct, sizes: list[int]) -> list[Struct] | None:
    """Pieces of dimension ``s`` cut into consecutive ``sizes`` (None if impossible)."""
    s = an.resolve(s)
    if len(sizes) == 1:
        return [s]
    if isinstance(s, Fixed):
        return [Fixed(n) for n in sizes]
    if isinstance(s, Var):
        return an.axes.bind_cat(s.axis, sizes)
    if isinstance(s, Prod):
        head = s.parts[0]
        rest = s.parts[1:]
        k = len(sizes)
        if (isinstance(head, Fixed) and len(set(sizes)) == 1 and head.size % k == 0):
            return [an.resolve(Prod((Fixed(head.size // k),) + rest)) for _ in sizes]
        return None
    # Cat: group its segments, cutting a segment where a piece boundary falls inside it
    segments = list(s.parts)
    pieces: list[Struct] = []
    for n in sizes:
        taken: list[Struct] = []
        got = 0
        while got < n:
            if not segments:
                return None
            seg = an.resolve(segments[0])
            m = an.size(seg)
            if got + m <= n:
                taken.append(seg)
                got += m
                segments.pop(0)
                continue
            cut = split_struct(an, node, seg, [n - got, m - (n - got)])
            if cut is None:
                return None
            taken.append(cut[0])
            segments[0] = cut[1]
            got = n
        pieces.append(an.resolve(Cat(tuple(taken))))
    return pieces


def _split_rewrite(an: Analysis, node: fx.Node, x: Struct, pieces: list[Struct], dim: int) -> None:
    if not an.has_var(an.resolve(x)):
        return

    def rewrite(builder: Any, n: fx.Node, args: tuple, kwargs: dict, pieces: list = pieces) -> tuple:
        return aten.split_with_sizes.default, (args[0], [builder.size_of(p) for p in pieces], dim), {}

    an.rewrites[node] = rewrite


@register_op(aten.tensor_split)
@register_op(aten.split, aten.split_with_sizes, aten.chunk, view=same_dim)
def _split(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
    val = node.meta.get("val")
    packet = node.target.overloadpacket
    dim_i = 2
    d = node.args[dim_i] if len(node.args) > dim_i else node.kwargs.get("dim", 0)
    d %= len(x)
    sizes = [hint(v.shape[d]) for v in val]
    if packet is aten.tensor_split:
        return an.unsupported(node, "tensor_split") if an.has_var(an.resolve(x[d])) else [
            an.fixed_label(v) for v in val]
    pieces = split_struct(an, node, x[d], sizes)
    if pieces is None:
        an.pin(x[d], node, "a split of channels that torchinn cannot follow")
        pieces = [Fixed(n) for n in sizes]
    _split_rewrite(an, node, x[d], pieces, d)
    return [list(x[:d]) + [p] + list(x[d + 1:]) for p in pieces]


@register_op(aten.unbind)
def _unbind(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
    d = (node.args[1] if len(node.args) > 1 else 0) % len(x)
    an.pin(x[d], node, "unbind along channels")
    rest = list(x[:d]) + list(x[d + 1:])
    return [list(rest) for _ in range(an.size(x[d]))]


@register_op(aten.select)
def _select(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
    d = node.args[1] % len(x)
    an.pin(x[d], node, "indexing one channel")
    return list(x[:d]) + list(x[d + 1:])


def _slice_like(an: Analysis, node: fx.Node, d: int, start: int, end: int, step: int,
                make_args: Any) -> Label:
    x = list(_lab(an, node))
    n = an.size(x[d])
    bounds = list(node.args[2:]) + list(node.kwargs.values())
    if any(isinstance(b, (fx.Node, torch.SymInt)) for b in bounds):
        # bounds computed from input sizes (``pos[:x.shape[1]]``): rows, not channels; they stay
        # whole and the slice keeps its own (dynamic) bounds
        an.pin(x[d], node, "a slice whose bounds depend on the input size")
        x[d] = Fixed(an.shape(node)[d])
        return x
    start = max(0, min(n, start + n if start < 0 else start))
    end = max(start, min(n, end + n if end < 0 else end))
    if start == 0 and end == n and step == 1:
        return x
    s = an.resolve(x[d])
    if not an.has_var(s):
        x[d] = Fixed(len(range(start, end, step)))
        return x
    if step != 1:
        an.pin(s, node, "a strided slice of channels")
        x[d] = Fixed(len(range(start, end, step)))
        return x
    sizes = [m for m in (start, end - start, n - end)]
    nonzero = [m for m in sizes if m]
    pieces = split_struct(an, node, s, nonzero)
    if pieces is None:
        an.pin(s, node, "a slice of channels that torchinn cannot follow")
        x[d] = Fixed(end - start)
        return x
    it = iter(pieces)
    before = next(it) if start else None
    middle = next(it)

    def rewrite(builder: Any, nd: fx.Node, args: tuple, kwargs: dict,
                before: Struct | None = before, middle: Struct = middle) -> tuple:
        lo = builder.size_of(before) if before is not None else 0
        return nd.target, make_args(builder, args, lo, builder.size_of(middle)), {}

    an.rewrites[node] = rewrite
    x[d] = middle
    return x


@register_op(aten.slice)
def _slice(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
    args = list(node.args) + [None] * (5 - len(node.args))
    d = (args[1] or 0) % len(x)
    start = hint(args[2]) if args[2] is not None else 0
    end = hint(args[3]) if args[3] is not None else _BIG
    step = hint(args[4]) if args[4] is not None else 1

    def make_args(builder: Any, a: tuple, lo: Any, length: Any) -> tuple:
        return (a[0], d, lo, builder.add(lo, length), step)

    return _slice_like(an, node, d, start, min(end, _BIG), step, make_args)


@register_op(aten.narrow)
def _narrow(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
    d = node.args[1] % len(x)
    start, length = hint(node.args[2]), hint(node.args[3])

    def make_args(builder: Any, a: tuple, lo: Any, length: Any) -> tuple:
        return (a[0], d, lo, length)

    return _slice_like(an, node, d, start, start + length, 1, make_args)


@register_op(aten.index_select, aten.gather, aten.index, aten.take_along_dim)
def _index(an: Analysis, node: fx.Node) -> Label:
    x = _lab(an, node)
    packet = node.target.overloadpacket
    if packet in (aten.index_select, aten.gather):
        d = node.args[1] % len(x)
        val = getattr(node.args[0], "meta", {}).get("val")
        if an.has_var(an.resolve(x[d])) and isinstance(val, torch.Tensor) and not val.is_floating_point():
            # an integer table (a buffer of token type or position ids) looked up by position:
            # its entries are ids, not channels
            an.pin(x[d], node, "an integer table indexed with a tensor")
        if an.has_var(an.resolve(x[d])):
            return an.unsupported(node, "indexing channels with a tensor")
        shape = an.shape(node)
        out = list(x)
        out[d] = Fixed(shape[d])
        if packet is aten.gather:
            return _fail(an, node, x, "gather")
        return out
    if any(an.has_var(an.resolve(s)) for s in x):
        return an.unsupported(node, "advanced indexing of a tensor with channels")
    return an.fixed_label(node.meta.get("val"))


@register_op(aten.expand_as)
def _expand_as(an: Analysis, node: fx.Node) -> Label:
    return an.broadcast(node, node.args[:2])
