"""Find the channel groups of a traced network.

:func:`analyse` walks the graph once in order and gives every tensor dimension a structure (see
:mod:`.labels`). What each operation does to channels is said by a handler registered for it
with :func:`~.registry.register_op` (see :mod:`.registry`); a handler unifies the dimensions
that must match, splits or pins axes, and returns the structures of the operation's outputs.
It also records:

* which parameter dimensions are *integrated* (a conv's or linear's input channels): their
  quadrature weights are fused into the sampled tensor;
* *contractions* between activations over a channel axis (``q @ k.T`` in attention, a sum over
  channels): one operand is multiplied by the ratio of current to full-size quadrature weights;
* *rewrites*: arguments that hold channel counts (``view`` shapes, ``groups`` of a depthwise conv,
  ``normalized_shape``, split sizes), recomputed from the current sizes when the network is built.

An operation without a handler is fine as long as none of its inputs has a channel axis; if one
does, the axes are kept at full size and the operation is reported (an error unless the caller
allows it), so the result is never silently wrong.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from .labels import Axes, Fixed, LabelError, Prod, Struct, Var  # noqa: F401
from .registry import OPS, handler, register_op, view_rule
from .trace import Traced, node_location

__all__ = ["Analysis", "Contraction", "Problem", "analyse", "register_op", "OPS"]

Label = Any  # list[Struct] for a tensor, a list of labels for a tuple/list, None otherwise
Rewrite = Callable[[Any, fx.Node, tuple, dict], tuple[tuple, dict]]


@dataclass
class Contraction:
    """Multiply input ``arg`` of ``node`` along ``dim`` by the ratio of current to full quadrature
    weights of the channels there (``mean``: also by current/full size)."""

    node: fx.Node
    arg: int
    dim: int
    mean: bool = False


@dataclass
class Problem:
    node: fx.Node
    op: str
    message: str
    axes: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.op} at node '{self.node.name}' ({node_location(self.node)}): {self.message}"


def hint(x: Any) -> int:
    """The example value of an int or SymInt."""
    if isinstance(x, int):
        return x
    if isinstance(x, torch.SymInt):
        h = x.node.hint
        if h is None:
            raise ValueError(f"symbolic size {x} has no example value")
        return int(h)
    if isinstance(x, fx.Node):  # a size computed in the graph (e.g. ``h // 2``): its example value
        val = x.meta.get("val")
        if isinstance(val, (int, torch.SymInt)):
            return hint(val)
        raise ValueError(f"node '{x.name}' is used as a size but has no example value")
    return int(x)


class Analysis:
    """State of one pass over a traced graph."""

    def __init__(self, traced: Traced) -> None:
        self.traced = traced
        self.axes = Axes()
        self.labels: dict[fx.Node, Label] = {}
        self.integrate_requests: list[tuple[str, int, fx.Node, int, int]] = []
        self.contractions: list[Contraction] = []
        self.rewrites: dict[fx.Node, Rewrite] = {}
        self.problems: list[Problem] = []
        #: dimensions that attention contracts per head (query/key, value): see :func:`split_heads`
        self.head_dims: list[Any] = []

    # -- labels ------------------------------------------------------------------------------
    def label(self, arg: Any) -> Label:
        if isinstance(arg, fx.Node):
            return self.labels.get(arg)
        return None

    def tensor_label(self, arg: Any) -> list[Struct] | None:
        lab = self.label(arg)
        if isinstance(lab, list) and all(isinstance(s, (Fixed, Var, Prod)) or hasattr(s, "parts") for s in lab):
            return lab
        return None

    def shape(self, node: fx.Node) -> list[int] | None:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return [hint(s) for s in val.shape]
        return None

    def fixed_label(self, val: Any) -> Label:
        """Labels of all-fixed dimensions for a value from ``node.meta['val']``."""
        if isinstance(val, torch.Tensor):
            return [Fixed(hint(s)) for s in val.shape]
        if isinstance(val, (list, tuple)):
            return [self.fixed_label(v) for v in val]
        return None

    def fresh_label(self, shape: Iterable[int]) -> list[Struct]:
        return [self.axes.new(n) for n in shape]

    def size(self, s: Struct) -> int:
        return self.axes.size(s)

    def resolve(self, s: Struct) -> Struct:
        return self.axes.resolve(s)

    def has_var(self, lab: Label) -> bool:
        if lab is None:
            return False
        if isinstance(lab, list):
            return any(self.has_var(x) for x in lab)
        return bool(self.axes.vars(lab))

    # -- constraints -------------------------------------------------------------------------
    def unify(self, a: Struct, b: Struct, node: fx.Node) -> None:
        try:
            self.axes.unify(a, b, f"{node.target} at node '{node.name}' ({node_location(node)})")
        except LabelError as err:
            raise RuntimeError(f"internal error at node '{node.name}' ({node.target}): {err}") from err

    def pin(self, lab: Label, node: fx.Node, why: str) -> None:
        """Keep every axis in ``lab`` at full size because of ``node`` (a documented limitation,
        not an error)."""
        for s in _flat(lab):
            if self.axes.vars(s):
                self.axes.pin(s, f"{why} at node '{node.name}' ({node_location(node)})")

    def unsupported(self, node: fx.Node, message: str) -> Label:
        """Record an op that touches channel axes and has no handler; pin what it touches."""
        touched: list[int] = []
        for arg in _node_args(node):
            for s in _flat(self.label(arg)):
                touched.extend(self.axes.vars(s))
        if touched:
            self.problems.append(Problem(node, _op_name(node), message, sorted(set(touched))))
            for arg in _node_args(node):
                for s in _flat(self.label(arg)):
                    self.axes.pin(s, f"unsupported {_op_name(node)} at node '{node.name}'")
        return self.fixed_label(node.meta.get("val"))

    def broadcast(self, node: fx.Node, args: Iterable[Any]) -> list[Struct]:
        """Elementwise broadcasting: dimensions of equal size (not broadcast) are unified."""
        out_shape = self.shape(node)
        if out_shape is None:
            return self.fixed_label(node.meta.get("val"))
        n = len(out_shape)
        out: list[Struct | None] = [None] * n
        for arg in args:
            lab = self.tensor_label(arg)
            if lab is None:
                continue
            offset = n - len(lab)
            for i, s in enumerate(lab):
                j = offset + i
                if self.size(s) != out_shape[j] or out_shape[j] == 1:
                    continue
                if out[j] is None:
                    out[j] = s
                else:
                    self.unify(out[j], s, node)
        return [s if s is not None else Fixed(out_shape[j]) for j, s in enumerate(out)]

    # -- parameters --------------------------------------------------------------------------
    def param_source(self, arg: Any, dim: int) -> tuple[str, int, list[fx.Node]] | None:
        """If ``arg`` is a parameter seen through dimension-preserving views (transpose, chunks,
        contiguous...), the parameter's name and which of its dims ``dim`` is."""
        node = arg
        path: list[fx.Node] = []
        while isinstance(node, fx.Node):
            if node in self.traced.source:
                return self.traced.source[node], dim, path
            path.append(node)
            if node.target is operator.getitem:  # a piece of a split: the split's rule follows
                node = node.args[0]
                if not isinstance(node, fx.Node) or node.op != "call_function":
                    return None
                path.append(node)
            rule = view_rule(node.target)
            if rule is None or not node.args:
                return None
            dim = rule(node, dim)
            node = node.args[0]
        return None

    def integrate(self, node: fx.Node, weight_arg: int, dim: int, input_arg: int, input_dim: int) -> None:
        """Channels along ``dim`` of input ``weight_arg`` are summed over by ``node``: fuse the
        quadrature into that parameter when possible, else scale the activation input."""
        lab = self.tensor_label(node.args[weight_arg])
        if lab is None or not self.axes.vars(lab[dim]):
            return
        src = self.param_source(node.args[weight_arg], dim)
        if src is None:
            self.contractions.append(Contraction(node, input_arg, input_dim))
        else:
            name, pdim, _ = src
            self.integrate_requests.append((name, pdim, node, input_arg, input_dim))

    def head_dim(self, s: Struct) -> None:
        """``s`` is an attention head's feature dimension (``q @ k.T`` sums over it)."""
        self.head_dims.append(s)

    def contract(self, node: fx.Node, arg: int, dim: int, mean: bool = False) -> None:
        lab = self.tensor_label(node.args[arg])
        if lab is not None and self.axes.vars(lab[dim]):
            self.contractions.append(Contraction(node, arg, dim, mean))


def _flat(lab: Label) -> list[Struct]:
    if lab is None:
        return []
    if isinstance(lab, list):
        return [s for x in lab for s in _flat(x)]
    return [lab]


def _node_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) or n)
    return out


def _op_name(node: fx.Node) -> str:
    t = node.target
    return str(getattr(t, "__name__", t)) if not hasattr(t, "overloadpacket") else str(t)


def analyse(traced: Traced, keep: Iterable[str] | dict[str, str] = ()) -> Analysis:
    """Run every handler over ``traced.graph`` and resolve what must stay at full size.

    ``keep``: tensor names (or prefixes: module names) whose every dimension stays discrete (a
    dict: with the reason for each).
    """
    an = Analysis(traced)
    why = dict(keep) if isinstance(keep, dict) else {k: "'{}' kept discrete by the caller" for k in keep}
    keep = tuple(why)
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            shape = an.shape(node)
            if node in traced.source:
                name = traced.source[node]
                lab = an.fresh_label(shape or [])
                an.labels[node] = lab
                hit = next((k for k in keep if name == k or name.startswith(k + ".")), None)
                if hit is not None:
                    an.pin(lab, node, why[hit].format(name))
            else:
                shape = an.shape(node)
                an.labels[node] = ([Fixed(n, f"network input '{node.name}' (dim {i})") for i, n in enumerate(shape)]
                                   if shape is not None else None)
        elif node.op == "call_function":
            fn = handler(node.target)
            if fn is None:
                an.labels[node] = an.unsupported(node, "no torchinn handler for this op")
            else:
                an.labels[node] = fn(an, node)
        elif node.op == "output":
            for k, arg in enumerate(_node_args(node)):
                lab = an.label(arg)
                if isinstance(lab, list):
                    for i, s in enumerate(lab):
                        if not isinstance(s, list):
                            an.axes.pin(s, f"network output {k} (dim {i})")
        elif node.op == "get_attr":
            an.labels[node] = an.fixed_label(node.meta.get("val"))
        else:
            an.labels[node] = an.unsupported(node, f"graph node of kind {node.op}")
    split_heads(an)
    return an


def split_heads(an: Analysis) -> None:
    """Decide which factors of each split axis stay channel axes.

    A split of ``H * d`` channels into ``(H, d)`` whose inner factor is an attention head's
    feature dimension (see :meth:`Analysis.head_dim`), or whose outer factor is the head count
    of such a split, is an *attention split*: the head size is kept (``d`` fixed; rotary
    embeddings and the softmax scale depend on it) and the heads stay a channel axis, so
    resizing removes whole heads. Under grouped-query attention the query heads are (key/value
    heads x queries per key/value head), and only the key/value heads are a channel axis: a
    removed key/value head takes its queries with it. Any other split keeps its innermost
    factor (channels per group) and fixes the outer ones (groups), as a grouped convolution
    does.
    """
    axes = an.axes
    head = {r for s in an.head_dims for r in axes.vars(s)}
    splits = [[p for p in parts if axes.vars(p)] for parts in axes.splits]
    heads: set[int] = set()
    attention: dict[int, Struct] = {}  # split -> its head size
    changed = True
    while changed:  # the heads of one attention split make another (values) one
        changed = False
        for i, parts in enumerate(splits):
            # a split whose head count is already fixed (Falcon's multi-query view of its fused
            # q/k/v as (heads + 2) x head size) still keeps its head size
            if i in attention or len(parts) < (1 if len(axes.splits[i]) > 1 else 2):
                continue
            inner = set(axes.vars(parts[-1]))
            outer = {r for p in parts[:-1] for r in axes.vars(p)}
            if inner <= head or outer & heads:
                attention[i] = parts[-1]
                heads |= set(axes.vars(parts[-2])) if len(parts) > 1 else set()
                changed = True
    for i in reversed(range(len(splits))):
        parts = [p for p in splits[i] if axes.vars(p)]
        if i in attention and len(parts) == 1 and len(splits[i]) == 1:
            if set(axes.vars(parts[0])) <= set(axes.vars(attention[i])):
                axes.pin(parts[0], "the head size of an attention (whole heads are removed)")
            continue
        if len(parts) < 2:
            continue
        if i in attention:
            axes.pin(parts[-1], "the head size of an attention (whole heads are removed)")
            parts = parts[:-1]
        for p in parts[:-1]:
            axes.pin(p, "the outer factor of a split channel axis (groups)")

