"""The conditions on input sizes and Python values that a traced graph is only valid under.

``torch.export`` traces one path through ``forward``: a branch on a dynamic size
(``h * 0.5 if x.shape[0] > 4 else h``) keeps only the side taken by the example, and records a
*guard* (``x.shape[0] > 4``) and a range for the size (``[5, inf)``). A Python number passed to
``forward`` is baked into the graph as a constant. :func:`collect` turns these into
:class:`Guard` s, plain expression trees (no code strings; they are saved with the model), which
the integral model checks before running (a ``ValueError``), and :func:`insert_checks` adds them
to a graph as ``aten._assert_scalar`` nodes, so the discrete network refuses such inputs too.

An expression is a nested tuple: ``("dim", i, d)`` is dimension ``d`` of flattened input ``i``,
``("input", i)`` the input itself, ``(op, *args)`` an operation of :data:`GUARD_OPS`, and ints, floats,
bools, strings and ``None`` are constants. A guard torchinn cannot express makes the sizes it
reads static instead (the existing shape check then refuses other sizes).
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sympy
import torch
from torch import Tensor, fx

__all__ = ["GUARD_OPS", "Guard", "collect", "evaluate", "graph_only", "insert_checks", "violation"]

log = logging.getLogger(__name__)

#: operation name -> (Python function, infix symbol for messages)
GUARD_OPS: dict[str, tuple[Callable[..., Any], str]] = {
    "add": (operator.add, "+"), "mul": (operator.mul, "*"), "floordiv": (operator.floordiv, "//"),
    "mod": (operator.mod, "%"), "pow": (operator.pow, "**"),
    "eq": (operator.eq, "=="), "ne": (operator.ne, "!="), "lt": (operator.lt, "<"),
    "le": (operator.le, "<="), "gt": (operator.gt, ">"), "ge": (operator.ge, ">="),
    "and": (operator.and_, "and"), "or": (operator.or_, "or"), "not": (operator.not_, "not"),
    "max": (max, "max"), "min": (min, "min"),
}


@dataclass(frozen=True)
class Guard:
    """A condition the inputs must meet: ``expr`` (see the module doc) and how to show it."""

    expr: Any
    text: str
    kind: str = "shape"  # "shape" (sizes), "range" (one size in [lo, hi]) or "value" (a Python input)


class _Untranslatable(Exception):
    pass


def _translate(e: Any, where: dict[Any, tuple[int, int]]) -> Any:
    """A sympy expression over size symbols as an expression tree (raises _Untranslatable)."""
    from torch.utils._sympy.functions import FloorDiv, Max, Min, Mod, PythonMod

    if isinstance(e, sympy.Symbol):
        if e not in where:
            raise _Untranslatable(f"symbol {e} is not an input size")
        return ("dim", *where[e])
    if e is sympy.true or e is sympy.false:
        return bool(e)
    if isinstance(e, sympy.Integer):
        return int(e)
    table: list[tuple[Any, str]] = [
        (sympy.Add, "add"), (sympy.Mul, "mul"), (FloorDiv, "floordiv"), (Mod, "mod"),
        (PythonMod, "mod"), (sympy.Mod, "mod"), (Max, "max"), (Min, "min"),
        (sympy.Eq, "eq"), (sympy.Ne, "ne"), (sympy.StrictLessThan, "lt"), (sympy.LessThan, "le"),
        (sympy.StrictGreaterThan, "gt"), (sympy.GreaterThan, "ge"), (sympy.And, "and"),
        (sympy.Or, "or"), (sympy.Not, "not")]
    if isinstance(e, sympy.Pow):
        base, exp = e.args
        if not (isinstance(exp, sympy.Integer) and int(exp) >= 0):
            raise _Untranslatable(f"power {e}")
        return ("pow", _translate(base, where), int(exp))
    for cls, name in table:
        if isinstance(e, cls):
            args = [_translate(a, where) for a in e.args]
            if name in ("add", "mul", "and", "or", "max", "min"):  # n-ary: fold left
                out = args[0]
                for a in args[1:]:
                    out = (name, out, a)
                return out
            return (name, *args)
    raise _Untranslatable(f"{type(e).__name__} in {e}")


def show(expr: Any, names: Sequence[str]) -> str:
    """``expr`` as Python-like text (``x.shape[0] > 4``)."""
    if isinstance(expr, tuple) and expr:
        head = expr[0]
        if head == "dim":
            return f"{names[expr[1]]}.shape[{expr[2]}]"
        if head == "input":
            return names[expr[1]]
        sym = GUARD_OPS[head][1]
        args = [show(a, names) for a in expr[1:]]
        if head == "not":
            return f"not ({args[0]})"
        if head in ("max", "min"):
            return f"{sym}({', '.join(args)})"
        parts = [a if not (isinstance(x, tuple) and x[0] not in ("dim", "input")) else f"({a})"
                 for a, x in zip(args, expr[1:])]
        return f" {sym} ".join(parts)
    return repr(expr)


#: bounds of guard arithmetic: an int result has at most MAX_BITS bits (a saved guard's constants
#: and the sizes it reads have at most 64); evaluation past them raises ValueError
MAX_BITS = 4096
_NUMERIC = {"add", "mul", "floordiv", "mod", "pow", "max", "min"}


def _number(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_BITS:
        raise ValueError(f"guard arithmetic past {MAX_BITS} bits")
    return value


def evaluate(expr: Any, flat: Sequence[Any]) -> Any:
    """The value of ``expr`` on flattened inputs ``flat`` (Python numbers), with bounded
    arithmetic: operations on numbers only, int results of at most :data:`MAX_BITS` bits, and
    ``pow`` computed only when its result stays within them (``ValueError`` otherwise)."""
    if isinstance(expr, tuple) and expr:
        head = expr[0]
        if head == "dim":
            x = flat[expr[1]]
            if not isinstance(x, Tensor):
                raise ValueError(f"input {expr[1]} is a {type(x).__name__}, not a tensor with sizes")
            return int(x.shape[expr[2]])
        if head == "input":
            x = flat[expr[1]]
            if x is not None and not isinstance(x, (bool, int, float, str)):
                raise ValueError(f"input {expr[1]} is a {type(x).__name__}, not a Python value")
            return x
        args = [evaluate(a, flat) for a in expr[1:]]
        if head in _NUMERIC:
            if any(a is None or isinstance(a, str) for a in args):
                raise ValueError(f"guard operation {head!r} on a non-number")
            if head == "pow":
                base, exp = args
                if isinstance(exp, bool) or not isinstance(exp, int) or not 0 <= exp <= 64 or (
                        isinstance(base, int) and base.bit_length() * exp > MAX_BITS):
                    raise ValueError(f"guard power past {MAX_BITS} bits or with exponent {exp!r} outside [0, 64]")
        try:
            return _number(GUARD_OPS[head][0](*args))
        except OverflowError as err:
            raise ValueError(f"guard arithmetic overflows ({err})") from None
    return expr


def _same_value(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def violation(guards: Sequence[Guard], flat: Sequence[Any], names: Sequence[str]) -> str | None:
    """A message for the first guard that ``flat`` breaks, or None."""
    for g in guards:
        if g.kind == "value":
            i, want = g.expr[1][1], g.expr[2]
            got = flat[i]
            if not _same_value(got, want):
                return (f"input {i} ('{names[i]}') is {got!r}, but the network was converted with "
                        f"{want!r} there, and torch.export bakes a Python {type(want).__name__} "
                        f"input into the traced graph as a constant; pass {want!r}, or convert again "
                        "with the value you need (or pass it as a tensor)")
            continue
        try:
            ok = bool(evaluate(g.expr, flat))
        except (ZeroDivisionError, ValueError, TypeError, IndexError, OverflowError):
            ok = False
        if not ok:
            shapes = ", ".join(f"{names[i]}: {tuple(x.shape)}" for i, x in enumerate(flat)
                               if isinstance(x, Tensor))
            if g.kind == "range":
                dim = g.expr[1] if g.expr[0] != "and" else g.expr[1][1]
                i, d = dim[1], dim[2]
                what = (f"input {i} ('{names[i]}') has size {flat[i].shape[d]} in dimension {d}, but "
                        f"the network was converted with a condition on that size and is only valid "
                        f"for {g.text}")
            else:
                what = (f"the inputs have shapes ({shapes}), but the network was converted with a "
                        f"condition on input sizes that these break: {g.text}")
            return (f"{what} (torch.export traced one side of a branch or check on it); convert "
                    "again with example inputs of the sizes you need")
    return None


def _range_guard(dim: tuple, name: str, lo: float, hi: float) -> Guard | None:
    conds = []
    if lo > 2:  # sizes 0 and 1 are traced as 2 and allowed at run time (as ExportedProgram.module())
        conds.append(("ge", dim, int(lo)))
    if hi != math.inf:
        conds.append(("le", dim, int(hi)))
    if not conds:
        return None
    expr = conds[0] if len(conds) == 1 else ("and", conds[0], conds[1])
    upper = "inf)" if hi == math.inf else f"{int(hi)}]"
    lower = int(lo) if lo > 2 else 0
    return Guard(expr, f"{name}.shape[{dim[2]}] in [{lower}, {upper}", "range")


#: guards raised inside these parts of torch only compute the shapes and strides of fake tensors
#: (contiguity, reshape checks, broadcasting); the graph runs the real ops, so they do not decide
#: which ops it has, and keeping them would refuse sizes that work (``T // 2 != 1``)
_MECHANICS = ("torch/_refs/", "torch/_prims/", "torch/_prims_common/", "torch/_subclasses/",
              "torch/_meta_registrations.py", "torch/fx/experimental/")


#: where a C++ kernel's own shape checks surface (their innermost Python frame is the op's call)
_OP_CALL = "torch/_ops.py"


def _mechanical(guard: Any) -> bool:
    """Whether ``guard`` (a shape-env guard) only served the fake tensors' shapes: raised in
    :data:`_MECHANICS`, or a ``size != 1`` raised in a C++ kernel (torch.export traces sizes as
    >= 2, so a size a kernel computes, such as the rows of CREPE's ``reshape(-1, 2048)``, is
    checked against 1; a batch of 1 breaks it, yet the real op computes the same there)."""
    loc = getattr(getattr(guard, "sloc", None), "framework_loc", None)
    path = str(getattr(loc, "filename", loc) or "").replace("\\", "/")
    if any(m in path for m in _MECHANICS):
        return True
    expr = getattr(guard, "expr", None)
    return (path.endswith(_OP_CALL) and isinstance(expr, sympy.Ne) and len(expr.args) == 2
            and any(a == 1 for a in expr.args))


def _bound(v: Any) -> float:
    """An end of a size range as a Python int, or +-inf."""
    from torch.utils._sympy.numbers import int_oo

    if v in (int_oo, sympy.oo):
        return math.inf
    if v in (-int_oo, -sympy.oo):
        return -math.inf
    return int(v)


def collect(ep: torch.export.ExportedProgram, inputs: Sequence[fx.Node], names: Sequence[str]
            ) -> tuple[list[Guard], set[tuple[int, int]]]:
    """The guards of ``ep`` over its user-input placeholders ``inputs`` (in ``ep.graph``), and the
    (input, dim) pairs that must stay static because a guard on them cannot be expressed."""
    guards: list[Guard] = []
    static: set[tuple[int, int]] = set()
    where: dict[Any, tuple[int, int]] = {}
    shape_env = None
    derived: list[tuple[tuple[int, int], Any]] = []
    for i, node in enumerate(inputs):
        val = node.meta.get("val")
        if isinstance(val, Tensor):
            fake_mode = getattr(val, "fake_mode", None)
            if fake_mode is not None and fake_mode.shape_env is not None:
                shape_env = fake_mode.shape_env
            for d, s in enumerate(val.shape):
                if not isinstance(s, torch.SymInt):
                    continue
                e = s.node.expr
                if isinstance(e, sympy.Symbol):
                    if e in where:  # the same size as an earlier dimension
                        a = ("dim", i, d)
                        guards.append(Guard(("eq", a, ("dim", *where[e])),
                                            f"{show(a, names)} == {show(('dim', *where[e]), names)}"))
                    else:
                        where[e] = (i, d)
                elif not e.is_number:
                    derived.append(((i, d), e))
        elif isinstance(val, (bool, int, float, str)) or val is None:
            guards.append(Guard(("eq", ("input", i), val), f"{names[i]} == {val!r}", "value"))
        else:  # a SymInt/SymFloat input or something else: keep it as the example (static)
            log.debug("input %d of type %s is not checked", i, type(val).__name__)
    for sym, (i, d) in where.items():
        vr = ep.range_constraints.get(sym)
        if vr is None:
            continue
        lo, hi = _bound(vr.lower), _bound(vr.upper)
        g = _range_guard(("dim", i, d), names[i], lo, hi)
        if g is not None:
            guards.append(g)
    for (i, d), e in derived:
        try:
            expr = ("eq", ("dim", i, d), _translate(e, where))
            guards.append(Guard(expr, show(expr, names)))
        except _Untranslatable:
            static.add((i, d))
    if shape_env is None:
        return guards, static
    seen: set[Any] = set()
    # sizes torch specialized to a number (a channel count marked dynamic that a weight fixes)
    fixed = {k: v for k, v in shape_env.replacements.items() if getattr(v, "is_number", False)}
    for sg in shape_env.guards:
        if _mechanical(sg):
            continue
        try:
            e = shape_env.simplify(sg.expr)
            # neither the guards themselves nor the ranges they refined (a guard `x.shape[0] > 1`
            # traced with a doubled batch of 1 refines nothing but must still refuse batch 1)
            known = shape_env._maybe_evaluate_static(e, axioms=(), var_to_range=())
        except Exception as err:  # noqa: BLE001 - a guard torch cannot simplify: its sizes stay static
            log.debug("guard %s not simplified: %s", sg.expr, err)
            known, e = None, sg.expr
        if known is not None and bool(known):
            continue  # always true here (implied by the ranges and the replacements)
        if e in seen:
            continue
        seen.add(e)
        try:
            expr = _translate(e.xreplace(fixed) if fixed else e, where)
        except _Untranslatable as why:
            log.debug("guard %s kept static: %s", e, why)
            static.update(where[s] for s in e.free_symbols if s in where)
            continue
        guards.append(Guard(expr, show(expr, names)))
    return guards, static


def _node(graph: fx.Graph, expr: Any, inputs: Sequence[fx.Node], memo: dict) -> Any:
    if not (isinstance(expr, tuple) and expr):
        return expr
    if expr in memo:
        return memo[expr]
    head = expr[0]
    if head == "dim":
        out = graph.call_function(torch.ops.aten.sym_size.int, (inputs[expr[1]], expr[2]))
    elif head == "input":
        out = inputs[expr[1]]
    else:
        out = graph.call_function(GUARD_OPS[head][0], tuple(_node(graph, a, inputs, memo) for a in expr[1:]))
    memo[expr] = out
    return out


def graph_only(g: Guard) -> bool:
    """A guard on a Python input whose value a runtime graph cannot hold (a str, None or NaN: a
    saved runtime graph compares numbers only). The integral model checks it before running its
    runtime; the graph module (:func:`.build.specialize`) gets it as a check of its own."""
    want = g.expr[2] if g.kind == "value" else 0
    return want is None or isinstance(want, str) or (isinstance(want, float) and math.isnan(want))


def insert_checks(graph: fx.Graph, guards: Sequence[Guard], inputs: Sequence[fx.Node],
                  names: Sequence[str], python_values: bool = False) -> None:
    """Add one ``aten._assert_scalar`` per guard to ``graph`` after ``inputs`` (its placeholders);
    those of :func:`graph_only` only with ``python_values`` (a graph that is never saved)."""
    memo: dict = {}
    for g in guards:
        if graph_only(g) and not python_values:
            continue
        if g.kind == "value":
            i, want = g.expr[1][1], g.expr[2]
            msg = (f"input {i} ('{names[i]}') must be {want!r}, the value the network was converted "
                   "with: torch.export bakes a Python input into the traced graph as a constant; pass "
                   f"{want!r}, or convert again with the value you need (or pass it as a tensor)")
            if isinstance(want, float) and math.isnan(want):  # nan != nan: only NaN passes
                g = Guard(("ne", g.expr[1], g.expr[1]), g.text, g.kind)
        elif g.kind == "range":
            i = g.expr[1][1] if g.expr[0] != "and" else g.expr[1][1][1]
            msg = (f"input {i} ('{names[i]}'): the network is only valid for {g.text} (torch.export "
                   "traced one side of a branch or check on that size); convert again with an "
                   "example of the size you need")
        else:
            msg = (f"the network was converted where {g.text} holds and is only valid there "
                   "(torch.export traced one side of a branch or check on input sizes)")
        cond = _node(graph, g.expr, inputs, memo)
        graph.call_function(torch.ops.aten._assert_scalar.default, (cond, msg))
