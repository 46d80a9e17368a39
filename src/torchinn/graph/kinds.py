"""The table of op kinds: what an op *is*, for the code that acts on whole layers.

A handler (:mod:`.registry`) says what an op does to channel axes. The code that works on layers
needs coarser facts: which op is a linear layer or a convolution, which argument holds its input,
weight and bias, which weight dimension reads the input channels; which ops only move elements
(views); which op is a batch norm and where its statistics are. They are here, in :data:`KINDS`,
and nowhere else: the class rebuild (:mod:`torchinn.discrete.rebuild`), the refit and the
importance scores (:mod:`torchinn.compression.refit`, :mod:`torchinn.compression.importance`), the
batch-norm folding (:mod:`.fuse`) and the batch-norm statistics (:mod:`.norms`) all read it, so a
user's op declared with ``register_op(op, kind=...)`` is honoured by all of them.

Kinds (:data:`KIND_NAMES`):

* ``"linear"``: ``y = x W^T + b`` over the last dimension of ``x``, ``W`` stored ``(out, in)``;
* ``"mm"``, ``"matmul"``: ``y = x @ W (+ b)`` with ``W`` as multiplied ``(in, out)``, maybe a
  transposing view of the stored tensor (``mm``/``addmm``: 2-d; ``matmul``: broadcasting);
* ``"conv"``, ``"conv_transpose"``: convolutions over dimension 1 of ``x`` (weight
  ``(out, in / groups, *taps)`` and ``(in, out / groups, *taps)``), with ``stride``, ``padding``,
  ``dilation`` at positions ``stride``, ``stride + 1``, ``stride + 2`` and ``groups`` (as
  ``aten.conv2d``); ``transposed``: the position of a flag that makes it transposed
  (``aten.convolution``);
* ``"view"``: the output's elements are elements of argument 0, moved, dropped or repeated,
  nothing computed (``view``, ``permute``, ``select``, ``expand``, ...);
* ``"batch_norm"``: a batch norm with its running statistics at ``mean`` and ``var``, ``eps``, and
  (when it can train) its ``training`` flag and ``momentum``.

``exact``: the op's output *is* that map of its input, weight and bias (every built-in layer).
An op that does more (a scale, an activation after the map) is not exact: its layer is refit on
the map's output (which the op then transforms as before), and it is never the layer a batch
norm or a scale is folded into. A user's kind is not exact unless it says so.

>>> kind_of(torch.ops.aten.conv2d.default).weight_in, kind_of(torch.ops.aten.linear.default).channel
(1, -1)
>>> Kind("linear", bias=None)
Kind(name='linear', input=0, weight=1, bias=None, exact=False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["KINDS", "KIND_NAMES", "LAYER_KINDS", "Kind", "is_view", "check_kind", "kind_of", "lookup", "node_kind"]

aten = torch.ops.aten

KIND_NAMES = ("linear", "mm", "matmul", "conv", "conv_transpose", "view", "batch_norm")
#: the kinds that multiply an input by a weight
LAYER_KINDS = ("linear", "mm", "matmul", "conv", "conv_transpose")
_CONVS = ("conv", "conv_transpose")
#: (weight dimension reading the input channels, weight dimension of the output channels)
_WEIGHT_DIMS = {"linear": (1, 0), "mm": (0, 1), "matmul": (0, 1), "conv": (1, 0), "conv_transpose": (0, 1)}
#: aten.batch_norm's positions (input, weight, bias, running_mean, running_var, training, momentum, eps)
_BATCH_NORM = {"weight": 1, "bias": 2, "mean": 3, "var": 4, "training": 5, "momentum": 6, "eps": 7}


@dataclass(frozen=True)
class Kind:
    """What an op is (see :mod:`torchinn.graph.kinds`). Argument positions are positional
    indices into the op's arguments; ``None``: the op has no such argument. The defaults are
    ``aten``'s layouts: ``Kind("linear")`` is ``(input, weight, bias)``, ``Kind("conv")`` adds
    stride at 3 and groups at 6, ``Kind("batch_norm")`` is ``aten.batch_norm``'s."""

    name: str
    input: int = 0
    weight: int | None = 1
    bias: int | None = 2
    exact: bool = False
    groups: int | None = None
    stride: int | None = None
    transposed: int | None = None
    mean: int | None = None
    var: int | None = None
    eps: int | None = None
    training: int | None = None
    momentum: int | None = None

    def __post_init__(self) -> None:
        if self.name not in KIND_NAMES:
            raise ValueError(f"an op kind is one of {KIND_NAMES}, got {self.name!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name not in ("name", "exact") and v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                                                      or v < 0):
                raise ValueError(f"Kind.{f.name} is an argument position (an int >= 0) or None, got {v!r}")
        if not isinstance(self.exact, bool):
            raise ValueError(f"Kind.exact is a bool, got {self.exact!r}")
        if self.name == "view":
            object.__setattr__(self, "weight", None)
            object.__setattr__(self, "bias", None)
        if self.name in LAYER_KINDS and self.weight is None:
            raise ValueError(f"a {self.name!r} op needs the position of its weight, got weight=None")
        if self.name in _CONVS:
            object.__setattr__(self, "groups", 6 if self.groups is None else self.groups)
            object.__setattr__(self, "stride", 3 if self.stride is None else self.stride)
        if self.name == "batch_norm":
            for k, v in _BATCH_NORM.items():
                if k not in ("weight", "bias", "training", "momentum") and getattr(self, k) is None:
                    object.__setattr__(self, k, v)

    def __repr__(self) -> str:
        fields = [f"name={self.name!r}"] + [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)[1:]
                                            if f.name in ("input", "weight", "bias", "exact")
                                            or getattr(self, f.name) is not None]
        return f"Kind({', '.join(fields)})"

    @property
    def is_layer(self) -> bool:
        return self.name in LAYER_KINDS

    @property
    def channel(self) -> int:
        """The dimension of the input (and output) that holds the channels: 1 for convolutions,
        -1 for the others."""
        return 1 if self.name in _CONVS else -1

    @property
    def weight_in(self) -> int:
        """The weight dimension that reads the input channels (of the weight as the op gets it)."""
        return _WEIGHT_DIMS[self.name][0]

    @property
    def weight_out(self) -> int:
        """The weight dimension of the output channels (of the weight as the op gets it)."""
        return _WEIGHT_DIMS[self.name][1]

    def arg(self, args: Sequence[Any], field: str, default: Any = None) -> Any:
        """The positional argument that ``field`` (``"weight"``, ``"groups"``, ...) names, else
        ``default``."""
        i = getattr(self, field)
        return args[i] if i is not None and i < len(args) else default

    def resolve(self, args: Sequence[Any]) -> Kind:
        """This kind for one call: a convolution whose ``transposed`` flag is set is a
        ``"conv_transpose"``."""
        if self.transposed is not None and self.transposed < len(args) and args[self.transposed] is True:
            return dataclasses.replace(self, name="conv_transpose", transposed=None)
        return self


def _table() -> dict[Any, Kind]:
    conv = Kind("conv", exact=True)
    conv_t = Kind("conv_transpose", exact=True)
    table: dict[Any, Kind] = {
        aten.linear: Kind("linear", exact=True),
        aten.mm: Kind("mm", bias=None, exact=True),
        aten.addmm: Kind("mm", input=1, weight=2, bias=0, exact=True),
        aten.matmul: Kind("matmul", bias=None, exact=True),
        aten.conv1d: conv, aten.conv2d: conv, aten.conv3d: conv,
        aten.convolution: Kind("conv", groups=8, transposed=6, exact=True),
        aten.conv_transpose1d: conv_t, aten.conv_transpose2d: conv_t, aten.conv_transpose3d: conv_t,
        aten.batch_norm: Kind("batch_norm", weight=1, bias=2, training=5, momentum=6, exact=True),
        # eval-mode export of a batch norm: no training flag, (output, mean, invstd) returned
        aten._native_batch_norm_legit_no_training: Kind("batch_norm", weight=1, bias=2, momentum=5, eps=6,
                                                        exact=True),
    }
    view = Kind("view", exact=True)
    for name in ("view", "reshape", "_unsafe_view", "permute", "transpose", "t", "numpy_T", "unsqueeze", "squeeze",
                 "select", "slice", "unflatten", "flatten", "unbind", "split", "split_with_sizes", "chunk",
                 "contiguous", "clone", "expand", "broadcast_to", "alias", "detach", "movedim", "narrow"):
        table[getattr(aten, name)] = view
    return table


#: op (an OpOverloadPacket, an OpOverload, which wins over its packet, or a Python callable) -> its kind
KINDS: dict[Any, Kind] = _table()


def lookup(table: dict[Any, Any], target: Any) -> Any:
    """``table``'s entry for ``target`` (an op overload, else its packet), else None: how the op
    tables here and in :mod:`.registry` are read."""
    try:
        if target in table:
            return table[target]
    except TypeError:  # unhashable target
        return None
    packet = getattr(target, "overloadpacket", None)
    return table.get(packet) if packet is not None else None


def kind_of(target: Any) -> Kind | None:
    """The kind of ``target`` (an op overload or packet, or a node's target), else None."""
    return lookup(KINDS, target)


def node_kind(target: Any, args: Sequence[Any]) -> Kind | None:
    """The kind of one call of ``target`` on positional ``args`` (see :meth:`Kind.resolve`)."""
    kind = kind_of(target)
    return kind.resolve(args) if kind is not None else None


def is_view(target: Any) -> bool:
    """Whether ``target`` is of kind ``"view"``."""
    kind = kind_of(target)
    return kind is not None and kind.name == "view"


def check_kind(targets: Sequence[Any], kind: Kind | str, override: bool = False) -> Kind:
    """``kind`` (a :class:`Kind`, or one of :data:`KIND_NAMES` with ``aten``'s layout) as a
    :class:`Kind`, checked for ``targets``: an op that has another kind already needs
    ``override=True``. What :func:`torchinn.register_op` does with its ``kind=``."""
    if isinstance(kind, str):
        if kind not in KIND_NAMES:
            raise ValueError(f"kind must be a torchinn.graph.Kind or one of {KIND_NAMES}, got {kind!r}")
        kind = Kind("batch_norm", training=5, momentum=6) if kind == "batch_norm" else Kind(kind)
    if not isinstance(kind, Kind):
        raise TypeError(f"kind must be a torchinn.graph.Kind or one of {KIND_NAMES}, got {kind!r}")
    for t in targets:
        old = KINDS.get(t) if _hashable(t) else None
        if not override and old is not None and old != kind:
            raise ValueError(f"op {t} already has the kind {old}; pass override=True to replace it")
    return kind


def _hashable(t: Any) -> bool:
    try:
        hash(t)
    except TypeError:
        return False
    return True
