"""Handlers for cutting tensors: split/chunk/unbind, select, slice/narrow, and indexing (see
:mod:`..analysis`). Slicing or splitting a channel axis cuts it into independent axes (``chunk``
of a fused projection, channel split); arguments holding channel counts are rewritten from the
current sizes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..analysis import Analysis, Label, hint
from ..labels import Cat, Fixed, Prod, Struct, Var
from ..registry import register_op, same_dim
from .core import arg_label, pin_fixed

aten = torch.ops.aten

__all__ = ["split_struct"]

_BIG = 2**62


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
    x = arg_label(an, node)
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
    x = arg_label(an, node)
    d = (node.args[1] if len(node.args) > 1 else 0) % len(x)
    an.pin(x[d], node, "unbind along channels")
    rest = list(x[:d]) + list(x[d + 1:])
    return [list(rest) for _ in range(an.size(x[d]))]


@register_op(aten.select)
def _select(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node)
    d = node.args[1] % len(x)
    an.pin(x[d], node, "indexing one channel")
    return list(x[:d]) + list(x[d + 1:])


def _slice_like(an: Analysis, node: fx.Node, d: int, start: int, end: int, step: int,
                make_args: Any) -> Label:
    x = list(arg_label(an, node))
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
    if start == end:  # an empty slice (``q[..., rotary_dim:]`` under full rotary): no channels
        x[d] = Fixed(0)
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
    x = arg_label(an, node)
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
    x = arg_label(an, node)
    d = node.args[1] % len(x)
    start, length = hint(node.args[2]), hint(node.args[3])

    def make_args(builder: Any, a: tuple, lo: Any, length: Any) -> tuple:
        return (a[0], d, lo, length)

    return _slice_like(an, node, d, start, start + length, 1, make_args)


def _packet_of(node: fx.Node) -> Any:
    return node.target.overloadpacket


@register_op(aten.index_select, aten.gather, aten.index, aten.take_along_dim)
def _index(an: Analysis, node: fx.Node) -> Label:
    x = arg_label(an, node)
    packet = _packet_of(node)
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
            return pin_fixed(an, node, x, "gather")
        return out
    if any(an.has_var(an.resolve(s)) for s in x):
        looked_up = _rows_looked_up(an, node, x)
        if looked_up is not None:
            return looked_up
        return an.unsupported(node, "advanced indexing of a tensor with channels")
    return an.fixed_label(node.meta.get("val"))


def _rows_looked_up(an: Analysis, node: fx.Node, x: Label) -> Label | None:
    """``table[ids]`` (``aten.index`` with one index tensor, GPT-J's sin/cos table looked up by
    position ids with integer ids): the indexed dimension is rows (kept whole), the other dimensions
    keep their channels and the indexed one becomes the index's dimensions. ``None`` otherwise."""
    indices = list(node.args[1])
    used = [i for i, ix in enumerate(indices) if ix is not None]
    if _packet_of(node) is not aten.index or len(used) != 1:
        return None
    (k,) = used
    ix = indices[k]
    ix_label = an.tensor_label(ix) if isinstance(ix, fx.Node) else None
    val = getattr(ix, "meta", {}).get("val")
    if (not isinstance(val, torch.Tensor) or val.is_floating_point() or val.dtype is torch.bool
            or (ix_label is not None and any(an.has_var(an.resolve(s)) for s in ix_label))):
        return None
    an.pin(x[k], node, "the rows of a table looked up with an index tensor")
    return list(x[:k]) + [Fixed(int(n)) for n in val.shape] + list(x[k + 1:])


@register_op(aten.expand_as)
def _expand_as(an: Analysis, node: fx.Node) -> Label:
    return an.broadcast(node, node.args[:2])
