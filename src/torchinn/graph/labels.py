"""What each tensor dimension is made of: the algebra of channel axes.

Every dimension of every tensor in a traced network gets a *structure*:

* ``Fixed(n)``: n positions that never change size (batch, space, tokens, kernel taps, a
  network's input channels and output classes, anything kept discrete);
* ``Var(a)``: the channels of axis ``a``, a candidate continuous dimension;
* ``Prod(parts)``: a flattened dimension, row-major (``flatten`` of channels x positions, heads
  x head dim);
* ``Cat(parts)``: a concatenated dimension (``torch.cat`` of feature maps, ``chunk`` of a fused
  projection).

Axes live in :class:`Axes`, a union-find table: two dimensions that must have the same
channels (a residual add, a conv's input and the previous conv's output) are *unified*; an axis
that must be split (a ``reshape`` into heads, a ``chunk``) is *bound* to a structure made of new
axes; an axis that must not change size is *pinned*, i.e. bound to ``Fixed``, with a reason.
After tracing, the unpinned axes that reach a parameter are the network's channel groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

__all__ = ["Fixed", "Var", "Prod", "Cat", "Struct", "Axes", "LabelError"]


class LabelError(Exception):
    """Two structures cannot be made equal (an internal inconsistency)."""


@dataclass(frozen=True)
class Fixed:
    size: int
    why: str = field(default="", compare=False)  # where the fixed size comes from, for messages

    def __repr__(self) -> str:
        return f"{self.size}"


@dataclass(frozen=True)
class Var:
    axis: int

    def __repr__(self) -> str:
        return f"a{self.axis}"


@dataclass(frozen=True)
class Prod:
    parts: tuple[Struct, ...]

    def __repr__(self) -> str:
        return "(" + "*".join(map(repr, self.parts)) + ")"


@dataclass(frozen=True)
class Cat:
    parts: tuple[Struct, ...]

    def __repr__(self) -> str:
        return "[" + "|".join(map(repr, self.parts)) + "]"


Struct = Union[Fixed, Var, Prod, Cat]


class Axes:
    """Union-find over channel axes, with bindings (splits, pins) and the reasons for pins."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._binding: dict[int, Struct] = {}
        self.pin_reasons: dict[int, str] = {}
        #: the parts of every axis split by :meth:`bind_split`, in order
        self.splits: list[tuple[Struct, ...]] = []

    # -- axes ------------------------------------------------------------------------------
    def new(self, size: int) -> Struct:
        """A fresh axis of ``size`` channels (``Fixed`` when there is only one channel)."""
        if size <= 1:
            return Fixed(size)
        self._parent.append(len(self._parent))
        self._size.append(size)
        return Var(len(self._parent) - 1)

    def find(self, a: int) -> int:
        root = a
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[a] != root:
            self._parent[a], a = root, self._parent[a]
        return root

    def axis_size(self, a: int) -> int:
        return self._size[self.find(a)]

    # -- structures ------------------------------------------------------------------------
    def resolve(self, s: Struct) -> Struct:
        """``s`` with every axis replaced by its root or its binding, in normal form."""
        if isinstance(s, Fixed):
            return s
        if isinstance(s, Var):
            root = self.find(s.axis)
            bound = self._binding.get(root)
            return Var(root) if bound is None else self.resolve(bound)
        parts = tuple(self.resolve(p) for p in s.parts)
        return _normal(Prod(parts) if isinstance(s, Prod) else Cat(parts))

    def size(self, s: Struct) -> int:
        s = self.resolve(s)
        if isinstance(s, Fixed):
            return s.size
        if isinstance(s, Var):
            return self._size[s.axis]
        if isinstance(s, Prod):
            return math.prod(self.size(p) for p in s.parts)
        return sum(self.size(p) for p in s.parts)

    def vars(self, s: Struct) -> list[int]:
        """Root axes in ``s``, in order of appearance (with repeats)."""
        s = self.resolve(s)
        if isinstance(s, Var):
            return [s.axis]
        if isinstance(s, Fixed):
            return []
        return [a for p in s.parts for a in self.vars(p)]

    def atoms(self, s: Struct) -> list[Struct]:
        """The top-level factors of ``s`` (a ``Cat`` counts as one factor)."""
        s = self.resolve(s)
        return list(s.parts) if isinstance(s, Prod) else [s]

    # -- constraints -----------------------------------------------------------------------
    def pin(self, s: Struct, reason: str) -> None:
        """Keep every axis in ``s`` at its full size."""
        for a in set(self.vars(s)):
            self.pin_reasons.setdefault(a, reason)
            # what it meets later is pinned for the same reason
            self._bind(a, Fixed(self._size[a], self.pin_reasons[a]))

    def _bind(self, root: int, s: Struct) -> None:
        self._binding[root] = s

    def bind_split(self, a: int, factors: list[int]) -> list[Struct]:
        """Split axis ``a`` (row-major) into factors, each a new axis. Which factors stay channel
        axes is decided once the whole graph is seen (:meth:`splits`, resolved by the analysis):
        the innermost by default (channels per group), the outer one for attention heads."""
        a = self.find(a)
        parts: list[Struct] = [self.new(f) for f in factors]
        self._bind(a, Prod(tuple(parts)))
        self.splits.append(tuple(parts))
        return parts

    def bind_cat(self, a: int, sizes: list[int]) -> list[Struct]:
        """Split axis ``a`` into consecutive segments of ``sizes`` channels, each its own axis."""
        a = self.find(a)
        parts = [self.new(n) for n in sizes]
        self._bind(a, Cat(tuple(parts)))
        return parts

    def unify(self, x: Struct, y: Struct, reason: str) -> None:
        """Make ``x`` and ``y`` the same dimension; what cannot be matched is pinned."""
        x, y = self.resolve(x), self.resolve(y)
        if x == y:
            return
        sx, sy = self.size(x), self.size(y)
        if sx != sy:
            raise LabelError(f"cannot unify {x} (size {sx}) with {y} (size {sy}): {reason}")
        if isinstance(x, Var) and isinstance(y, Var):
            self._parent[x.axis] = y.axis
            if x.axis in self.pin_reasons:
                self.pin_reasons.setdefault(y.axis, self.pin_reasons[x.axis])
            return
        if isinstance(x, Var) or isinstance(y, Var):
            var, other = (x, y) if isinstance(x, Var) else (y, x)
            if var.axis in self.vars(other):
                self.pin(Prod((x, y)), reason)
            elif isinstance(other, Fixed):
                self.pin(var, other.why or reason)
            else:
                self._bind(var.axis, other)
            return
        if isinstance(x, Fixed) or isinstance(y, Fixed):
            self.pin(Prod((x, y)), reason)
            return
        if type(x) is type(y):
            self._unify_sequences(x, y, reason)
            return
        copies = _as_copies(x) or _as_copies(y)
        if copies is not None:  # (n x channels) against a concatenation: n equal segments
            cat = x if isinstance(x, Cat) else y
            self._unify_sequences(copies, cat, reason)
            return
        self.pin(Prod((x, y)), reason)

    def _unify_sequences(self, x: Prod | Cat, y: Prod | Cat, reason: str) -> None:
        """Match two products (or two concatenations) part by part, splitting axes where a part of
        one side covers several parts of the other."""
        product = isinstance(x, Prod)
        xs, ys = list(x.parts), list(y.parts)
        while xs and ys:
            a, b = xs[0], ys[0]
            sa, sb = self.size(a), self.size(b)
            if sa == sb:
                self.unify(a, b, reason)
                xs.pop(0), ys.pop(0)
                continue
            big, small_size, big_list = (a, sb, xs) if sa > sb else (b, sa, ys)
            big_size = max(sa, sb)
            if product and big_size % small_size:
                self.pin(Prod((x, y)), reason)
                return
            big = self.resolve(big)
            if isinstance(big, Var):
                if product:
                    head, tail = self.bind_split(big.axis, [small_size, big_size // small_size])
                else:
                    head, tail = self.bind_cat(big.axis, [small_size, big_size - small_size])
                big_list[0:1] = [head, tail]
            elif isinstance(big, Fixed):
                rest = big_size // small_size if product else big_size - small_size
                big_list[0:1] = [Fixed(small_size), Fixed(rest)]
            else:
                self.pin(Prod((x, y)), reason)
                return
        if xs or ys:
            self.pin(Prod((x, y)), reason)

    def reasons(self, s: Struct) -> list[str]:
        """Why axes in ``s`` (followed through splits) were pinned, in order, without repeats."""
        out: list[str] = []
        if isinstance(s, Var):
            root = self.find(s.axis)
            if root in self.pin_reasons:
                out.append(self.pin_reasons[root])
            bound = self._binding.get(root)
            if bound is not None and not isinstance(bound, Fixed):
                out.extend(self.reasons(bound))
        elif isinstance(s, (Prod, Cat)):
            for p in s.parts:
                out.extend(self.reasons(p))
        return list(dict.fromkeys(out))


def _as_copies(s: Struct) -> Cat | None:
    """``Prod((Fixed(n), rest...))`` as the concatenation of ``n`` copies of ``rest``."""
    if not isinstance(s, Prod) or not isinstance(s.parts[0], Fixed) or s.parts[0].size < 2:
        return None
    rest = s.parts[1] if len(s.parts) == 2 else Prod(s.parts[1:])
    return Cat((rest,) * s.parts[0].size)


def _normal(s: Prod | Cat) -> Struct:
    """Flatten nested products/concatenations, merge neighbouring fixed parts, drop size-1
    factors, and distribute a leading concatenation over a product (``flatten`` after ``cat``)."""
    if isinstance(s, Prod):
        parts: list[Struct] = []
        for p in s.parts:
            parts.extend(p.parts if isinstance(p, Prod) else [p])
        parts = [p for p in parts if not (isinstance(p, Fixed) and p.size == 1)]
        merged: list[Struct] = []
        for p in parts:
            if merged and isinstance(p, Fixed) and isinstance(merged[-1], Fixed):
                merged[-1] = Fixed(merged[-1].size * p.size)
            else:
                merged.append(p)
        if not merged:
            return Fixed(1)
        if len(merged) == 1:
            return merged[0]
        if isinstance(merged[0], Cat) and not any(isinstance(p, Cat) for p in merged[1:]):
            rest = tuple(merged[1:])
            return _normal(Cat(tuple(Prod((seg,) + rest) for seg in merged[0].parts)))
        return Prod(tuple(merged))
    parts = []
    for p in s.parts:
        parts.extend(p.parts if isinstance(p, Cat) else [p])
    merged = []
    for p in parts:
        if isinstance(p, Fixed) and p.size == 0:
            continue
        if merged and isinstance(p, Fixed) and isinstance(merged[-1], Fixed):
            merged[-1] = Fixed(merged[-1].size + p.size)
        else:
            merged.append(p)
    if not merged:
        return Fixed(0)
    if len(merged) > 1 and all(p == merged[0] for p in merged[1:]):
        # n copies of the same channels (a fused q/k/v whose heads attention ties, the two
        # halves of a rotary table) are laid out as (n x channels), row-major
        return _normal(Prod((Fixed(len(merged)), merged[0])))
    return merged[0] if len(merged) == 1 else Cat(tuple(merged))
