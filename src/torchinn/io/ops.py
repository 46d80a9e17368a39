"""The ATen operators a ``.inn`` graph may call: an allow-list, and the bounds on their arguments.

**The list.** :data:`ALLOWED` holds the ATen operators torchinn's own export emits for the networks
it supports, and nothing else. It was made by converting every network of the demo zoo
(:mod:`torchinn_demo.zoo`, at full and half sizes), the tiny Hugging Face models of
``tests/discrete/test_hf.py`` (Llama, Qwen2, Mistral, GPT-2 sdpa/eager, BERT, ViT; hidden sizes fixed and
free), the digits transformer and the models the tests save, and collecting the targets of each
runtime graph; ``tests/io/test_serialize_ops.py`` checks that every zoo network's graph still uses
only these (``python tests/io/test_serialize_ops.py`` prints the list to paste here). To these,
:func:`_derive` adds at import what conversion can follow in a user's network: the functional
overloads of the ops with a built-in handler (:mod:`torchinn.graph.registry`) and of the ops
``torch.Tag.pointwise`` marks (``leaky_relu``, ``hardswish``, ``clamp`` ...), and their in-place
forms that write only their first argument (``silu_``, ``fill_``), under the rules below (uninitialised memory, ``empty``, and
recurrences whose time grows with a value are left out). A new operator emitted by export fails
that test, and :func:`torchinn.save` refuses a graph that calls an operator off the list (a file
that could not be loaded is never written). The list can be extended in code with
:func:`allow_ops`, never from a file (a handler registered later with ``register_op`` does not
extend it). No sparse, layout or storage operator is on it, and :func:`allow_ops` refuses those
and every operator that writes to an argument.

**Writes.** The only operators on the list that write to an argument are the in-place
operators of :data:`IN_PLACE` (``relu_``, ``add_``, ``fill_`` ...), and each may only write a tensor
that a call of :data:`FRESH` (operators that always return a new tensor) made in the same
forward, directly, through other in-place calls or through views of it (``x[:, 0] = 0`` on a
copy): never an input, a stored tensor or a view of one. ``batch_norm``
updates its running statistics when training: they must be stored tensors (``tensors[i]``) and
``training`` the runtime's ``norm_training`` flag (the runtime gives such a batch norm copies) or
false.

**Sizes.** ``budget`` is 4 times the elements the file stores, plus 4096. The arguments of
:data:`SIZE_ARGS` (the sizes of created tensors, pads, output sizes, scale factors, transposed
convolution strides; for a derived operator every int argument that is not a dimension or an
index, :func:`_size_args`) are checked at load: each entry is a constant, a node of input-size
arithmetic, or a group size; the product of the constants (and group sizes) in one operator's
size arguments is at most ``budget``, and at most 4 entries come from input sizes. So a
tensor created from sizes written in the file has at most ``budget`` elements times at most 4
input dimensions (an attention mask is batch x heads x length x length). The Python arithmetic
nodes (``py::operator.*``) are bounded the same way: constants multiply to at most 2**256
(with at most 64 input-size factors), so no node builds a huge integer.

**Not bounded**: what follows from the shapes of the inputs and stored tensors (a file may
broadcast a stored ``[n, 1]`` against ``[1, n]``, chain matrix products, or take the input sizes
to the fourth power); such a forward can be slow or fail with torch's out-of-memory error, as
any network can. What a well-formed graph computes is the model's business: a file may compute
wrong numbers.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx

from ..graph.registry import OPS

__all__ = ["FormatError", "ALLOWED", "IN_PLACE", "FRESH", "SIZE_ARGS", "allow_ops", "is_allowed", "check_graph"]

class FormatError(ValueError):
    """The file is not a torchinn model this version can read."""


#: ``name.overload`` of every ATen operator a file may call (see the module doc for how it was made)
ALLOWED: set[str] = {
    "__and__.Tensor", "_assert_scalar.default", "_assert_tensor_metadata.default",
    "adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default", "adaptive_max_pool2d.default",
    "add.Tensor", "add_.Tensor", "addmm.default", "arange.default", "avg_pool1d.default",
    "avg_pool2d.default", "batch_norm.default", "cat.default", "contiguous.default", "conv1d.default",
    "conv2d.default", "conv_transpose2d.input", "cos.default", "div.Tensor", "dropout.default",
    "embedding.default", "expand.default", "expand_as.default", "flatten.using_ints", "gather.default",
    "ge.Scalar", "gelu.default", "group_norm.default", "gt.Tensor", "hardtanh_.default", "index.Tensor",
    "layer_norm.default", "le.Tensor", "linear.default", "matmul.default", "max_pool1d.default",
    "max_pool2d.default", "mean.dim", "mul.Tensor", "neg.default", "new_ones.default", "pad.default",
    "permute.default", "pixel_shuffle.default", "pow.Tensor_Scalar", "relu.default", "relu_.default",
    "reshape.default", "rsqrt.default", "scaled_dot_product_attention.default", "select.int",
    "sigmoid.default", "silu.default", "sin.default", "slice.Tensor", "softmax.int",
    "split_with_sizes.default", "squeeze.dim", "sub.Tensor", "sym_size.int", "tanh.default", "to.device",
    "to.dtype", "to.dtype_layout", "transpose.int", "unbind.int", "unflatten.int", "unsqueeze.default",
    "upsample_bilinear2d.vec", "upsample_nearest2d.vec", "view.default", "where.ScalarOther",
    "zeros.default",
}

#: the operators on the list that write their first argument (and return it)
IN_PLACE = {"add_.Tensor", "relu_.default", "hardtanh_.default"}

#: operators whose result is always a newly allocated tensor (never an argument or a view of one)
FRESH = {
    "__and__.Tensor", "adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default",
    "adaptive_max_pool2d.default", "add.Tensor", "addmm.default", "arange.default", "avg_pool1d.default",
    "avg_pool2d.default", "batch_norm.default", "cat.default", "conv1d.default", "conv2d.default",
    "conv_transpose2d.input", "cos.default", "div.Tensor", "embedding.default", "gather.default",
    "ge.Scalar", "gelu.default", "group_norm.default", "gt.Tensor", "index.Tensor", "layer_norm.default",
    "le.Tensor", "linear.default", "matmul.default", "max_pool1d.default", "max_pool2d.default",
    "mean.dim", "mul.Tensor", "neg.default", "new_ones.default", "pow.Tensor_Scalar", "relu.default",
    "rsqrt.default", "scaled_dot_product_attention.default", "sigmoid.default", "silu.default",
    "sin.default", "softmax.int", "sub.Tensor", "tanh.default", "upsample_bilinear2d.vec",
    "upsample_nearest2d.vec", "where.ScalarOther", "zeros.default",
}

#: operator -> the arguments that size the tensor it makes (bounded at load, see the module doc)
SIZE_ARGS: dict[str, tuple[str, ...]] = {
    "zeros.default": ("size",), "new_ones.default": ("size",), "arange.default": ("end",),
    "expand.default": ("size",), "pad.default": ("pad",),
    "upsample_bilinear2d.vec": ("output_size", "scale_factors"),
    "upsample_nearest2d.vec": ("output_size", "scale_factors"),
    "adaptive_avg_pool1d.default": ("output_size",), "adaptive_avg_pool2d.default": ("output_size",),
    "adaptive_max_pool2d.default": ("output_size",),
    "conv1d.default": ("padding",), "conv2d.default": ("padding",),
    "conv_transpose2d.input": ("stride", "padding", "output_padding", "dilation"),
}

_NEVER = ("sparse", "dense", "mkldnn", "layout", "storage", "set_", "resize", "from_file", "save", "load",
          "print", "warn", "seed", "pin_memory", "unsafe", "record_stream", "_cufft")


def _key(op: Any) -> str:
    return f"{op._opname}.{op._overloadname}"


def _writes(op: torch._ops.OpOverload) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments)


#: beyond :data:`_NEVER`: uninitialised memory (``empty``: it would show the process's old memory),
#: recurrences whose time grows with a value (``special_*_polynomial_*``); and ``copy`` (the
#: TorchScript list and dict copies)
_NOT_DERIVED = ("empty", "polynomial")
#: int arguments of an operator on a tensor that index or name its dimensions, not sizes it makes
_INDEX_ARGS = frozenset({
    "dim", "dim0", "dim1", "start_dim", "end_dim", "index", "groups", "chunks", "split_size", "split_sizes",
    "sections", "source", "destination", "shifts", "diagonal", "offset", "start", "end", "step", "length",
    "kernel_size", "stride", "dilation", "divisor_override", "correction", "decimals", "upscale_factor",
    "downscale_factor", "unflatten_sizes", "sizes", "size", "shape"})
#: arguments whose values are enumerations the schema types as ints
_ENUMS = frozenset({"dtype", "out_dtype", "layout", "memory_format", "device"})
#: ... except these, whose int arguments are the sizes of what they make
_MAKERS = ("new_", "full", "ones", "zeros", "rand", "arange", "linspace", "eye", "repeat", "tile", "pad",
           "expand", "broadcast_to", "upsample", "adaptive", "scalar_tensor")


def _tensor_typed(arg: Any) -> bool:
    return "Tensor" in str(arg.type)


def _size_args(op: torch._ops.OpOverload) -> tuple[str, ...]:
    """The arguments of a derived operator bounded as sizes: every int argument (and scale factor,
    and the range of ``arange`` / ``linspace``) of an operator that makes a tensor from them (a
    factory, a pad, a repeat, an upsample) or of one with no tensor argument, and the int
    arguments other than dimension and index names of the rest."""
    args = op._schema.arguments
    maker = any(m in op._opname for m in _MAKERS) or not any(_tensor_typed(a) for a in args)
    out = []
    for a in args:
        kind = str(a.type)
        numeric = ("int" in kind.lower() or ("float" in kind and a.name.startswith("scale"))
                   or (op._opname in ("arange", "linspace") and "number" in kind))
        if numeric and not _tensor_typed(a) and a.name not in _ENUMS and (maker or a.name not in _INDEX_ARGS):
            out.append(a.name)
    return tuple(out)


def _derive() -> None:
    """Add to the list what torchinn's conversion knows how to follow: the functional overloads of
    the ops with a registered handler (:mod:`torchinn.graph.registry`, read once, at import) and of
    every op ``torch.Tag.pointwise`` marks, and their in-place forms that write only their first
    argument (which may only write fresh results, :data:`IN_PLACE`); their size arguments are
    bounded (:func:`_size_args`)."""
    candidates: set[torch._ops.OpOverload] = set()
    for k in OPS:
        packet = [getattr(k, o) for o in k.overloads()] if isinstance(k, torch._ops.OpOverloadPacket) else [k]
        for op in packet:
            if isinstance(op, torch._ops.OpOverload):
                candidates.add(op)
    for name in torch.ops.aten:
        packet = getattr(torch.ops.aten, name, None)
        if isinstance(packet, torch._ops.OpOverloadPacket):
            for o in packet.overloads():
                op = getattr(packet, o)
                if torch.Tag.pointwise in op.tags:
                    candidates.add(op)
    for op in candidates:
        key = _key(op)
        if (op.namespace != "aten" or key in ALLOWED or any(w in op._opname for w in _NEVER + _NOT_DERIVED)
                or op._opname == "copy"
                or not any(_tensor_typed(a) for a in (*op._schema.arguments, *op._schema.returns))):
            continue
        if _writes(op) or op._schema.is_mutable:
            written = [a for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write]
            if op._opname.endswith("_") and len(written) == 1 and written[0].name == op._schema.arguments[0].name:
                IN_PLACE.add(key)
                ALLOWED.add(key)
            continue
        ALLOWED.add(key)
        # the schema says the result aliases nothing: a new tensor (but the dropouts return their
        # input itself when not training, whatever the schema says)
        if "dropout" not in op._opname and all(r.alias_info is None and str(r.type) == "Tensor"
                                               for r in op._schema.returns):
            FRESH.add(key)
        sizes = _size_args(op)
        if sizes:
            SIZE_ARGS[key] = sizes


def allow_ops(*ops: torch._ops.OpOverload) -> None:
    """Let ``.inn`` files call these ATen operators too (``torch.ops.aten.erf.default``; in this
    process only). Refused: anything but an ATen ``OpOverload``, sparse, layout, storage, file and
    global-state operators, and operators that write to an argument."""
    for op in ops:
        if not isinstance(op, torch._ops.OpOverload) or op.namespace != "aten":
            raise TypeError(f"allow_ops needs ATen operator overloads such as torch.ops.aten.erf.default, got "
                            f"{op!r} of type {type(op).__name__}")
        if any(w in op._opname for w in _NEVER):
            raise ValueError(f"allow_ops: {op} is a sparse, layout, storage, file or global-state operator; "
                             "a torchinn file may never call it")
        if _writes(op) or op._schema.is_mutable:
            raise ValueError(f"allow_ops: {op} writes to an argument ({op._schema}); a torchinn file may only "
                             "call operators that return new values")
    ALLOWED.update(_key(op) for op in ops)


def is_allowed(op: torch._ops.OpOverload) -> bool:
    """Whether a file may call ``op`` (an ATen ``OpOverload``)."""
    return op.namespace == "aten" and _key(op) in ALLOWED


def refusal(op: torch._ops.OpOverload, where: str) -> str:
    """The message for a call of ``op`` that is not on the list."""
    return (f"{where} calls aten::{_key(op)}, which is not on torchinn's list of operators a .inn file may "
            f"call (the ops its export emits); if you trust this operator, extend the list in code with "
            f"torchinn.io.format.allow_ops(torch.ops.aten.{_key(op)})")


# -- checks of a built graph ---------------------------------------------------------------------

def _value(node: fx.Node, name: str, index: int) -> Any:
    """Argument ``name`` (schema position ``index``) of a call, or its default."""
    if name in node.kwargs:
        return node.kwargs[name]
    if index < len(node.args):
        return node.args[index]
    arg = node.target._schema.arguments[index]
    return arg.default_value if arg.has_default_value() else None


def _views_first(op: torch._ops.OpOverload) -> bool:
    """Whether the result of ``op`` is (a view of) its first argument, by its schema's alias sets."""
    args, returns = op._schema.arguments, op._schema.returns
    if not args or args[0].alias_info is None or len(returns) != 1 or returns[0].alias_info is None:
        return False
    return bool(set(args[0].alias_info.before_set) & set(returns[0].alias_info.before_set))


def _fresh(node: Any) -> bool:
    """Whether ``node`` is a tensor made in this forward: a result of :data:`FRESH`, or an in-place
    op's result or a view (``slice``, ``select``, ``view`` ...) of one."""
    while isinstance(node, fx.Node) and node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        key = _key(node.target)
        if key in FRESH:
            return True
        if not node.args or not (key in IN_PLACE or (key in ALLOWED and _views_first(node.target))):
            return False
        node = node.args[0]
    return False


_ARITH = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
          operator.neg, math.ceil, math.floor, math.sqrt, math.trunc, torch.sym_float, torch.sym_int,
          torch.sym_max, torch.sym_min, max, min}
_LOGIC = {operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, torch.sym_not}
_ARITH_LIMIT, _DEGREE_LIMIT = 2**256, 64


def _weight(value: Any, memo: dict, group_sizes: list[int], where: str) -> tuple[int, int] | None:
    """(product of the constants and group sizes, number of input sizes) of an int/float value:
    a bound of its size in units of input sizes; None for a value that is not size arithmetic."""
    if isinstance(value, bool):
        return 1, 0
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return None
        a = abs(value)
        return (max(1, math.ceil(a), math.ceil(1 / a)) if a else 1), 0
    if not isinstance(value, fx.Node) or value.op != "call_function":
        return None
    if value in memo:
        return memo[value]
    target, args = value.target, value.args
    out: tuple[int, int] | None = None
    if target is torch.ops.aten.sym_size.int:
        out = 1, 1
    elif target is operator.getitem and isinstance(args[0], fx.Node) and args[0].op == "placeholder" \
            and args[0].name == "sizes" and 0 <= args[1] < len(group_sizes):
        out = group_sizes[args[1]], 0
    elif target in _LOGIC:
        out = 1, 0
    elif target in _ARITH:
        parts = [_weight(a, memo, group_sizes, where) for a in args]
        if all(p is not None for p in parts):
            out = math.prod(p[0] for p in parts), sum(p[1] for p in parts)
            if out[0] > _ARITH_LIMIT or out[1] > _DEGREE_LIMIT:
                raise FormatError(f"graph node {value.name!r}: its size arithmetic multiplies constants up to "
                                  f"{out[0]:.3g} over {out[1]} input size(s); at most 2**256 over "
                                  f"{_DEGREE_LIMIT}")
    memo[value] = out
    return out


def _check_sizes(node: fx.Node, key: str, budget: int, memo: dict, group_sizes: list[int]) -> None:
    where = f"graph node {node.name!r} (aten::{key})"
    schema = node.target._schema
    const, degree = 1, 0
    for i, arg in enumerate(schema.arguments):
        if arg.name not in SIZE_ARGS[key]:
            continue
        value = _value(node, arg.name, i)
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if item is None:
                continue
            w = _weight(item, memo, group_sizes, where)
            if w is None:
                raise FormatError(f"{where}: argument {arg.name!r} must be constants or arithmetic on input sizes "
                                  f"(aten.sym_size) and group sizes, got {item!r}"[:300])
            const, degree = const * w[0], degree + w[1]
    if const > budget:
        raise FormatError(f"{where}: its size arguments {list(SIZE_ARGS[key])} ask for up to {const} elements "
                          f"(times the input sizes); a tensor made from sizes in the file may have at most "
                          f"{budget} (4 times the elements the file stores, plus 4096)")
    if degree > 4:
        raise FormatError(f"{where}: its size arguments multiply {degree} input sizes; at most 4")


def check_graph(graph: fx.Graph, budget: int, group_sizes: list[int]) -> None:
    """Check the writes, running statistics and sizes of a rebuilt graph (see the module doc);
    ``group_sizes``: the groups' max sizes, the values of ``sizes[i]``."""
    memo: dict = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if not isinstance(node.target, torch._ops.OpOverload):
            _weight(node, memo, group_sizes, node.name)  # bounds Python arithmetic
            continue
        key, where = _key(node.target), f"graph node {node.name!r} (aten::{_key(node.target)})"
        for i, arg in enumerate(node.target._schema.arguments):
            if "Layout" in str(arg.type):
                layout = _value(node, arg.name, i)
                if layout not in (None, torch.strided):
                    raise FormatError(f"{where}: layout must be torch.strided, got {layout}")
        if _writes(node.target) and (key not in IN_PLACE or not _fresh(node.args[0] if node.args else None)):
            raise FormatError(f"{where} writes to its argument {node.args[0] if node.args else None}, which is not "
                              "a tensor made in this forward (an input, a stored tensor or a view of one); a "
                              "torchinn file may only write in place to the results of its own operations")
        if key == "batch_norm.default":
            training = _value(node, "training", 5)
            if not (training is False or (isinstance(training, fx.Node) and training.op == "placeholder"
                                          and training.name == "norm_training")):
                raise FormatError(f"{where}: training must be the runtime's norm_training flag or false, got "
                                  f"{training!r}")
            for name, i in (("running_mean", 3), ("running_var", 4)):
                v = _value(node, name, i)
                if v is not None and not (isinstance(v, fx.Node) and v.target is operator.getitem
                                          and isinstance(v.args[0], fx.Node) and v.args[0].name == "tensors"):
                    raise FormatError(f"{where}: {name} must be a stored tensor (tensors[i]) or null, got {v!r}")
        if key in SIZE_ARGS:
            _check_sizes(node, key, budget, memo, group_sizes)


_derive()
