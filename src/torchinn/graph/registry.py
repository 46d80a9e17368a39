"""The op registry: which handler says what an operation does to channel axes.

Handlers are registered with :func:`register_op` when :mod:`torchinn.graph` is imported (the
built-in ones in :mod:`.ops`), so a user's handler
registered later stays; registering a second handler for an op needs ``override=True``.

A handler may also declare its op *view-like* (``view=``): the output is the input seen through a
dimension-preserving view (``contiguous``, ``transpose``, ``permute``, the pieces of a ``split``),
with a rule mapping an output dimension to the input's. The analysis follows parameters through
these views (a transposed weight is still the weight).

A handler may also say what *kind* of op it is (``kind=``: a linear layer, a convolution, a view,
a batch norm, with where its weight and bias are): the code that acts on whole layers (the class
rebuild, the refit, the importance scores, the batch-norm folding) reads the table of kinds in
:mod:`.kinds`, and nothing else keeps a list of ops. So a user's op registered with its kind,

    @torchinn.register_op(torch.ops.mylib.scaled_linear, kind="linear")
    def _(an, node): ...

converts, resizes, comes back in the user's class, and is refit by ``prune(..., "reconstruct")``
like ``nn.Linear``.

Every op that ``torch.Tag.pointwise`` marks, and its in-place variant (``relu6_`` of ``relu6``),
needs no registration: it is elementwise with broadcasting (:func:`handler`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from .kinds import KINDS, Kind, check_kind, lookup

if TYPE_CHECKING:
    from .analysis import Analysis

__all__ = ["OPS", "VIEWS", "handler", "is_pointwise", "register_op", "same_dim", "view_rule"]

Handler = Callable[["Analysis", fx.Node], Any]
ViewRule = Callable[[fx.Node, int], int]  # (node, output dim) -> input dim

#: op (an OpOverload, an OpOverloadPacket or a Python callable) -> handler
OPS: dict[Any, Handler] = {}
#: view-like ops (same keys as :data:`OPS`) -> rule from an output dimension to the input's
VIEWS: dict[Any, ViewRule] = {}


def same_dim(node: fx.Node, dim: int) -> int:
    """The view rule of ops that keep every dimension where it is (``contiguous``, ``split``)."""
    return dim


def _check_target(t: Any) -> None:
    if isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return
    if isinstance(t, (str, bytes)) or not callable(t):
        raise TypeError(f"register_op needs ops such as torch.ops.aten.relu (a packet, all overloads) "
                        f"or torch.ops.aten.relu.default (one overload), or a Python callable; "
                        f"got {t!r} of type {type(t).__name__}")


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def register_op(*targets: Any, view: ViewRule | None = None, kind: Kind | str | None = None,
                override: bool = False) -> Callable[[Handler], Handler]:
    """Decorator: ``handler(analysis, node) -> output label`` for the given ops.

    Targets may be ``torch.ops.aten.x`` packets (all overloads), single overloads (which win over
    their packet) or Python callables. An op that already has a handler is an error unless
    ``override=True``. ``view``: the op is view-like (see :mod:`torchinn.graph.registry`); ``view(node, d)``
    is the input dimension that output dimension ``d`` shows. ``kind``: what the op is for the
    code that acts on layers, a :class:`~torchinn.graph.kinds.Kind` or one of its names
    (``"linear"``, ``"conv"``, ``"view"``, ... with ``aten``'s argument layout: ``"linear"`` is
    ``(input, weight, bias, ...)``); without it, the op keeps the kind it had (if any). A kind
    that differs from the op's current one needs ``override=True`` too.
    """
    if not targets:
        raise TypeError("register_op needs at least one op, got none")
    targets = tuple(dict.fromkeys(targets))
    for t in targets:
        _check_target(t)
        if not override and t in OPS:
            raise ValueError(f"op {t} already has a handler ({_name(OPS[t])}); pass override=True "
                             "to replace it")
    if view is not None and not callable(view):
        raise TypeError(f"view must be a function (node, output dim) -> input dim, got {view!r}")
    if kind is not None:
        kind = check_kind(targets, kind, override)

    def deco(fn: Handler) -> Handler:
        if not callable(fn):
            raise TypeError(f"register_op decorates a handler function, got {fn!r}")
        for t in targets:
            OPS[t] = fn
            if view is not None:
                VIEWS[t] = view
            else:
                VIEWS.pop(t, None)
            if kind is not None:
                KINDS[t] = kind
        return fn

    return deco


@functools.cache
def is_pointwise(target: Any) -> bool:
    """Whether ``torch.Tag.pointwise`` marks this overload, or it is the in-place variant
    (``foo_``) of an overload it marks."""
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if torch.Tag.pointwise in target.tags:
        return True
    name = target.overloadpacket.__name__
    if torch.Tag.inplace not in target.tags or not name.endswith("_") or name.endswith("__"):
        return False
    functional = getattr(getattr(torch.ops, target.namespace), name[:-1], None)
    overload = getattr(functional, target._overloadname, None) if functional is not None else None
    return isinstance(overload, torch._ops.OpOverload) and torch.Tag.pointwise in overload.tags


def _pointwise(an: Analysis, node: fx.Node) -> Any:
    if not isinstance(node.meta.get("val"), torch.Tensor):
        return an.unsupported(node, "a pointwise op with several outputs")
    return an.broadcast(node, list(node.args) + list(node.kwargs.values()))


def handler(target: Any) -> Handler | None:
    """The handler of ``target``: its own, its packet's, else the elementwise rule for pointwise ops."""
    fn = lookup(OPS, target)
    if fn is None and is_pointwise(target):
        return _pointwise
    return fn


def view_rule(target: Any) -> ViewRule | None:
    """The view rule of a view-like op (see :func:`register_op`), else None."""
    return lookup(VIEWS, target)
