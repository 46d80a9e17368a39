"""The input guards of a ``.inn`` file, checked and bounded (used by :mod:`torchinn.io.checks`).

A guard (:mod:`torchinn.graph.guards`) is a small expression over the inputs' sizes that the
model checks before each forward. A file's guards are bounded when loading: at most
:data:`MAX_GUARDS` guards of at most 256 nodes and 32 levels each, ints within +-2**63, strings of
at most 1000 characters and only compared, ``pow`` exponents literal ints in [0, 64], texts of at
most 1000 characters, and the forms the runtime reads for ``value`` and ``range`` guards.
:func:`torchinn.graph.guards.evaluate` then bounds each step at run time (results of at most
4096 bits), so a guard such as ``["pow", 10, ["pow", 10, 11]]`` is a :class:`FormatError` at
load instead of a forward that never ends.
"""

from __future__ import annotations

from typing import Any

from ..graph.guards import GUARD_OPS
from .ops import FormatError

__all__ = ["guard_expr", "guard_shape", "check_guards", "MAX_GUARDS"]

MAX_GUARDS = 1000
_MAX_NDIM = 32


def _index(value: Any, field: str, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < max(1, n):
        raise FormatError(f"{field} must be an int in [0, {max(0, n - 1)}], got {value!r}"[:300])
    return value


_GUARD_NODES = 256  # per guard; with depth 32, ints of 64 bits and powers up to 64 (evaluate bounds the rest)


def guard_expr(value: Any, field: str, num_inputs: int, depth: int = 0, count: list[int] | None = None) -> Any:
    """A saved guard expression (:mod:`torchinn.graph.guards`) back as a tuple tree: lists
    ``["dim", i, d]``, ``["input", i]`` and ``[op, *args]`` with ``op`` a known operation;
    numbers, strings, booleans and null as they are; ``{"f": "inf"}`` for non-finite floats.
    Bounded: at most 32 levels and 256 nodes, ints within +-2**63, strings of at most 1000
    characters (operands of ``eq``/``ne`` only), ``pow`` exponents literal ints in [0, 64];
    :func:`torchinn.graph.guards.evaluate` bounds the arithmetic at run time."""
    count = [0] if count is None else count
    count[0] += 1
    if count[0] > _GUARD_NODES:
        raise FormatError(f"{field} has more than {_GUARD_NODES} nodes")
    if depth > 32:
        raise FormatError(f"{field} is nested more than 32 levels deep")
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        raise FormatError(f"{field}: ints in a guard must be within +-2**63, got one of {value.bit_length()} bits")
    if isinstance(value, str) and len(value) > 1000:
        raise FormatError(f"{field}: a string in a guard has more than 1000 characters")
    if value is None or isinstance(value, (bool, int, str, float)):
        return value
    if isinstance(value, dict):
        if set(value) != {"f"} or not isinstance(value["f"], str) or value["f"] not in ("inf", "-inf", "nan"):
            raise FormatError(f"{field} must be {{'f': 'inf', '-inf' or 'nan'}}, got {value!r}"[:300])
        return float(value["f"])
    if not isinstance(value, list):
        raise FormatError(f"{field} must be a list, a number, a string, a boolean or null, got {value!r}"[:300])
    if not value:
        raise FormatError(f"{field} is an empty list")
    head = value[0]
    if isinstance(head, str) and head in ("dim", "input"):
        if len(value) != (3 if head == "dim" else 2):
            raise FormatError(f"{field}: {head!r} takes {2 if head == 'dim' else 1} argument(s)")
        _index(value[1], f"{field}[1]", num_inputs)
        if head == "dim":
            _index(value[2], f"{field}[2]", _MAX_NDIM)
        return tuple(value)
    if not isinstance(head, str) or head not in GUARD_OPS:
        raise FormatError(f"{field}: unknown operation {head!r}; known: {sorted(GUARD_OPS)}"[:300])
    arity = 1 if head == "not" else 2
    if len(value) != arity + 1:
        raise FormatError(f"{field}: {head!r} takes {arity} argument(s), got {len(value) - 1}")
    if head == "pow" and (isinstance(value[2], bool) or not isinstance(value[2], int) or not 0 <= value[2] <= 64):
        raise FormatError(f"{field}: the exponent of 'pow' must be an int in [0, 64], got {value[2]!r}"[:300])
    if head not in ("eq", "ne") and any(isinstance(v, str) for v in value[1:]):
        raise FormatError(f"{field}: {head!r} of a string (strings are only compared, with 'eq' or 'ne')")
    return (head, *(guard_expr(v, f"{field}[{k}]", num_inputs, depth + 1, count) for k, v in enumerate(value[1:], 1)))


def guard_shape(kind: str, expr: Any, field: str) -> None:
    """The form the runtime reads a guard of ``kind`` in: ``value``: ``("eq", ("input", i), c)``;
    ``range``: ``ge``/``le`` of a ``dim`` and an int, or ``and`` of two of those."""
    def bound(e: Any) -> bool:
        return (isinstance(e, tuple) and e[0] in ("ge", "le") and isinstance(e[1], tuple) and e[1][0] == "dim"
                and isinstance(e[2], int) and not isinstance(e[2], bool))
    if kind == "value":
        ok = (isinstance(expr, tuple) and expr[0] == "eq" and isinstance(expr[1], tuple) and expr[1][0] == "input"
              and not isinstance(expr[2], tuple))
    elif kind == "range":
        ok = bound(expr) or (isinstance(expr, tuple) and expr[0] == "and" and bound(expr[1]) and bound(expr[2]))
    else:
        ok = True
    if not ok:
        raise FormatError(f"{field}: a {kind!r} guard must be "
                          + ("['eq', ['input', i], a constant]" if kind == "value" else
                             "['ge' or 'le', ['dim', i, d], an int], or 'and' of two of those"))


def check_guards(guards: Any, num_inputs: int) -> list[tuple]:
    """Check a file's ``input_guards`` (see the module doc); returns their expressions."""
    if not isinstance(guards, list):
        raise FormatError(f"input_guards must be a list, got {guards!r}"[:300])
    if len(guards) > MAX_GUARDS:
        raise FormatError(f"input_guards has {len(guards)} entries; at most {MAX_GUARDS}")
    out = []
    for i, g in enumerate(guards):
        field = f"input_guards[{i}]"
        if not isinstance(g, dict) or set(g) != {"expr", "text", "kind"}:
            raise FormatError(f"{field} must be an object with keys expr, text, kind, got {g!r}"[:300])
        if not isinstance(g["text"], str):
            raise FormatError(f"{field}.text must be a string, got {g['text']!r}"[:300])
        if len(g["text"]) > 1000:
            raise FormatError(f"{field}.text has more than 1000 characters")
        if g["kind"] not in ("shape", "range", "value") or not isinstance(g["kind"], str):
            raise FormatError(f"{field}.kind must be 'shape', 'range' or 'value', got {g['kind']!r}"[:300])
        expr = guard_expr(g["expr"], f"{field}.expr", num_inputs)
        guard_shape(g["kind"], expr, f"{field}.expr")
        out.append(expr)
    return out
