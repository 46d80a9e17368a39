"""The graph of a ``.inn`` file, rebuilt from an allow-list (used by :mod:`torchinn.io.checks`).

Call targets are the ATen operators of :data:`torchinn.io.ops.ALLOWED` (the ones
torchinn's export emits; the name is checked against the list before torch looks it up) and
the handful of Python functions torchinn's graphs use; each call is checked against the
operator's schema, and then :func:`torchinn.io.ops.check_graph` checks the writes and
the sizes; node names and keyword names must be plain identifiers (they
become Python code in ``torch.fx``); node references, placeholders, indexes into the runtime's
lists and the output arity are checked before the graph exists. Every problem raises
:class:`FormatError` naming the node.
"""

from __future__ import annotations

import builtins
import keyword
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from .ops import ALLOWED, FormatError, is_allowed, refusal

__all__ = ["FormatError", "graph_from_json", "target_name"]


# -- call targets --------------------------------------------------------------------------------

#: the Python functions torchinn's runtime graphs call (symbolic shape arithmetic, tuple indexing),
#: with their number of positional arguments
_PY: dict[str, tuple[Callable, int]] = {
    **{f"operator.{n}": (getattr(operator, n), 2) for n in (
        "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "eq", "ne", "lt", "le", "gt", "ge")},
    "operator.neg": (operator.neg, 1),
    **{f"math.{n}": (getattr(math, n), 1) for n in ("ceil", "floor", "sqrt", "trunc")},
    **{f"torch.{n}": (getattr(torch, n), 1) for n in ("sym_float", "sym_int", "sym_not")},
    **{f"torch.{n}": (getattr(torch, n), 2) for n in ("sym_max", "sym_min")},
    # torch.export's runtime checks of input sizes write sympy's Max/Min as Python's (a max-pooling
    # with ceil_mode=True before a flatten: max(1, (H - 5) // 4))
    **{f"builtins.{n}": (getattr(builtins, n), 2) for n in ("max", "min")},
}
_PY_NAMES = {fn: name for name, (fn, _) in _PY.items()}
_ALLOWED = ("allowed: the aten:: operators of torchinn.io.ops.ALLOWED, and torchinn's arithmetic "
            "helpers py::operator.*, py::math.*, py::torch.sym_*, py::builtins.max/min")


def target_name(target: Any) -> str:
    """The name a graph node's target is saved under; ``TypeError`` for targets a file may not call."""
    if isinstance(target, torch._ops.OpOverload):
        if is_allowed(target):
            return f"aten::{target._opname}.{target._overloadname}"
        raise TypeError(f"cannot save this model: {refusal(target, 'its graph')}")
    if target in _PY_NAMES:
        return f"py::{_PY_NAMES[target]}"
    raise TypeError(f"cannot save a graph calling {target!r}: a torchinn file may only call the ATen operators "
                    f"of torchinn.io.ops.ALLOWED and {sorted(_PY)}")


def _resolve_target(name: Any, node: str) -> tuple[Any, int | None]:
    where = f"graph node {node!r}"
    if not isinstance(name, str):
        raise FormatError(f"{where}: target must be a string, got {name!r}")
    kind, _, rest = name.partition("::")
    if kind == "py":
        if rest not in _PY:
            raise FormatError(f"{where} calls {name!r}, which a torchinn file may not call ({_ALLOWED})")
        return _PY[rest]
    opname, _, overload = rest.partition(".")
    if kind != "aten" or not opname.isidentifier() or not (overload or "default").isidentifier():
        raise FormatError(f"{where} calls {name!r}, which a torchinn file may not call ({_ALLOWED})")
    if f"{opname}.{overload or 'default'}" not in ALLOWED:  # refused before torch looks the name up
        raise FormatError(f"{where} calls {name!r}, which is not on torchinn's list of operators a .inn file may "
                          f"call (the ops its export emits); if you trust this operator, extend the list in "
                          f"code with torchinn.io.format.allow_ops(torch.ops.aten.{opname}.{overload or 'default'})")
    try:
        op = getattr(getattr(torch.ops.aten, opname), overload or "default")
    except (AttributeError, RuntimeError) as err:
        raise FormatError(f"{where}: this torch has no operator {name!r} used by the saved graph") from err
    if not isinstance(op, torch._ops.OpOverload):
        raise FormatError(f"{where}: {name!r} is not an operator")
    return op, None


def _check_schema(op: Any, arity: int | None, args: tuple, kwargs: dict, node: str) -> None:
    where = f"graph node {node!r} ({op})"
    if arity is not None:  # a Python function: fixed positional arity, plain operands
        if len(args) != arity or kwargs:
            raise FormatError(f"{where} takes {arity} positional argument(s), got {len(args)} and "
                              f"keywords {sorted(kwargs)}")
        for a in args:
            if not isinstance(a, (fx.Node, int, float)):
                raise FormatError(f"{where}: arguments must be nodes or numbers, got {a!r}")
        if op is operator.getitem and (not isinstance(args[0], fx.Node) or isinstance(args[1], bool)
                                       or not isinstance(args[1], int)):
            raise FormatError(f"{where}: indexes a node with an int, got {args!r}")
        return
    schema = op._schema
    positional = [a for a in schema.arguments if not a.kwarg_only]
    names = {a.name for a in schema.arguments}
    if len(args) > len(positional):
        raise FormatError(f"{where} takes at most {len(positional)} positional arguments, got {len(args)}")
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise FormatError(f"{where} has no argument(s) {unknown}")
    by_position = {a.name for a in positional[:len(args)]}
    if by_position & set(kwargs):
        raise FormatError(f"{where}: argument(s) {sorted(by_position & set(kwargs))} given twice")
    missing = [a.name for a in schema.arguments
               if a.name not in by_position and a.name not in kwargs and not a.has_default_value()]
    if missing:
        raise FormatError(f"{where} is missing argument(s) {missing}")


# -- graph values --------------------------------------------------------------------------------

_MAX_DEPTH = 16
_SPECIAL_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _among(value: Any, options: Any) -> bool:
    """``value in options`` for a string ``value`` (False for anything else, hashable or not)."""
    return isinstance(value, str) and value in options


def _identifier(name: Any, what: str) -> str:
    """A name that torch.fx writes into Python code: a plain identifier (no dunder, not ``self``)."""
    if (not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or len(name) > 200
            or name.startswith("__") or name == "self"):
        raise FormatError(f"{what} must be a Python identifier, got {repr(name)[:100]}")
    return name


def _decode(value: Any, env: dict[str, fx.Node], where: str, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise FormatError(f"{where}: arguments nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        raise FormatError(f"{where}: an argument must be a number, string, null or a one-key object, got {value!r}")
    (kind, v), = value.items()
    if kind == "n":
        if not isinstance(v, str) or v not in env:
            raise FormatError(f"{where} refers to unknown node {v!r} (nodes must be defined before use)")
        return env[v]
    if kind == "f":
        if not _among(v, _SPECIAL_FLOATS):
            raise FormatError(f"{where}: a special float must be one of {sorted(_SPECIAL_FLOATS)}, got {v!r}")
        return _SPECIAL_FLOATS[v]
    if kind in ("l", "t"):
        if not isinstance(v, list):
            raise FormatError(f"{where}: a {'list' if kind == 'l' else 'tuple'} must be a JSON array, got {v!r}")
        items = [_decode(x, env, where, depth + 1) for x in v]
        return items if kind == "l" else tuple(items)
    if kind == "d":
        if not isinstance(v, dict):
            raise FormatError(f"{where}: a dict must be a JSON object, got {v!r}")
        return {_identifier(k, f"{where}: a keyword"): _decode(x, env, where, depth + 1) for k, x in v.items()}
    if kind in ("dtype", "layout", "memory_format"):
        obj = getattr(torch, v, None) if isinstance(v, str) and v.isidentifier() else None
        cls = {"dtype": torch.dtype, "layout": torch.layout, "memory_format": torch.memory_format}[kind]
        if not isinstance(obj, cls):
            raise FormatError(f"{where}: unknown {kind} {v!r}")
        return obj
    if kind == "device":
        try:
            return torch.device(v) if isinstance(v, str) else None
        except RuntimeError as err:
            raise FormatError(f"{where}: bad device {v!r} ({err})") from err
    raise FormatError(f"{where}: unknown value tag {kind!r}")


_RUNTIME_PLACEHOLDERS = ("tensors", "sizes", "scales", "training", "norm_training")
_NODE_KEYS = {"placeholder": {"op", "name"}, "call_function": {"op", "name", "target", "args", "kwargs"},
              "output": {"op", "name", "args", "kwargs"}}


def graph_from_json(nodes: Any, num_inputs: int, num_outputs: int, index_limits: dict[str, int]) -> fx.Graph:
    """Rebuild a runtime graph: ``5 + num_inputs`` placeholders, allowed calls, one output of
    ``num_outputs`` values. ``index_limits``: placeholder name -> how many items it holds (the
    ints a ``getitem`` of it may use)."""
    if not isinstance(nodes, list) or not nodes:
        raise FormatError(f"graph must be a non-empty list of nodes, got {type(nodes).__name__}")
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    placeholders, done = 0, False
    for i, entry in enumerate(nodes):
        op = entry.get("op") if isinstance(entry, dict) else None
        if not _among(op, _NODE_KEYS):
            raise FormatError(f"graph node {i} must be an object with op in {sorted(_NODE_KEYS)}, got {entry!r}"[:300])
        if set(entry) != _NODE_KEYS[op]:
            raise FormatError(f"graph node {i} ({op}) must have the keys {sorted(_NODE_KEYS[op])}, got {sorted(entry)}")
        name = _identifier(entry["name"], f"graph node {i}: name")
        if name in env:
            raise FormatError(f"graph node {i}: name {name!r} is used twice")
        if done:
            raise FormatError(f"graph node {name!r} comes after the output node")
        if op == "placeholder":
            if placeholders != i:
                raise FormatError(f"graph placeholder {name!r} comes after other nodes")
            if i < len(_RUNTIME_PLACEHOLDERS) and name != _RUNTIME_PLACEHOLDERS[i]:
                raise FormatError(f"graph placeholder {i} must be named {_RUNTIME_PLACEHOLDERS[i]!r}, got {name!r}")
            placeholders += 1
            node = graph.placeholder(name)
        else:
            if op == "call_function":  # a forbidden call is named first, whatever else is wrong
                target, arity = _resolve_target(entry["target"], name)
            if placeholders != 5 + num_inputs:
                raise FormatError(f"graph has {placeholders} placeholders; expected 5 (tensors, sizes, scales, "
                                  f"training, norm_training) + {num_inputs} input(s) of in_spec")
            where = f"graph node {name!r}"
            args = _decode(entry["args"], env, where)
            kwargs = _decode(entry["kwargs"], env, where)
            if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise FormatError(f"{where}: args must be a tuple and kwargs a dict, got {args!r} and {kwargs!r}"[:300])
            if op == "output":
                if len(args) != 1 or kwargs or not isinstance(args[0], (tuple, list)) or len(args[0]) != num_outputs:
                    raise FormatError(f"{where}: the output must be one list of {num_outputs} values (the "
                                      f"out_spec's leaves), got {args!r}"[:300])
                graph.output(args[0])
                done = True
                continue
            _check_schema(target, arity, args, kwargs, name)
            if target is operator.getitem and args[0].op == "placeholder" and args[0].name in index_limits:
                limit = index_limits[args[0].name]
                if not 0 <= args[1] < limit:
                    raise FormatError(f"{where} takes item {args[1]} of {args[0].name!r}, which has {limit} "
                                      f"items; the index must be in [0, {limit - 1}]")
            node = graph.create_node("call_function", target, args, kwargs, name=name)
        if node.name != name:
            raise FormatError(f"graph node {i}: name {name!r} is reserved in torch.fx")
        env[name] = node
    if not done:
        raise FormatError("graph has no output node")
    try:
        graph.lint()
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        raise FormatError(f"graph: inconsistent ({err})") from err
    return graph
