"""Checks of a ``.inn`` file before anything is built from it (used by :mod:`torchinn.serialize`).

A file only *describes* a model: its graph is rebuilt from an allow-list of call targets (ATen
operators minus a few that touch files, stdout or global state or skip bounds checks, and the
handful of Python functions torchinn's graphs use), node names and keyword names must be plain
identifiers (they become Python code in ``torch.fx``), and every metadata field is checked for
type, range and agreement with the stored tensors before any tensor is allocated from it. Sizes
declared in the metadata are bounded by the elements the file actually stores, so a small file
cannot ask for gigabytes. Every problem raises :class:`FormatError` naming the field.
"""

from __future__ import annotations

import itertools
import keyword
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx
from torch.utils import _pytree as pytree

from .functions import KINDS
from .quadrature import QUADRATURES

__all__ = ["FormatError", "target_name", "graph_from_json", "check_meta", "check_tensors"]


class FormatError(ValueError):
    """The file is not a torchinn model this version can read."""


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
}
_PY_NAMES = {fn: name for name, (fn, _) in _PY.items()}
_ALLOWED = ("allowed: aten:: operators except a few that touch files or global state, and torchinn's "
            "arithmetic helpers py::operator.*, py::math.*, py::torch.sym_*")

#: ATen operators a file may not call: they read or write files, print, change global state, or
#: index memory without bounds checks (the rest compute on tensors and check their arguments)
_DENIED_ATEN = {
    "from_file", "save", "load", "_print", "warn", "_test_warn_in_autograd", "manual_seed", "seed",
    "set_grad_enabled", "set_", "set_data", "_cufft_set_plan_cache_max_size", "record_stream",
    "pin_memory", "_pin_memory", "_unsafe_index", "_unsafe_index_put", "_unsafe_masked_index",
    "_unsafe_masked_index_put_accumulate", "_sparse_coo_tensor_unsafe", "_sparse_csr_tensor_unsafe",
    "_sparse_csc_tensor_unsafe", "_sparse_bsr_tensor_unsafe", "_sparse_bsc_tensor_unsafe",
    "_sparse_compressed_tensor_unsafe", "_set_item",
}


def target_name(target: Any) -> str:
    """The name a graph node's target is saved under; ``TypeError`` for targets a file may not call."""
    if isinstance(target, torch._ops.OpOverload):
        if target.namespace == "aten" and target._opname not in _DENIED_ATEN:
            return f"aten::{target._opname}.{target._overloadname}"
    elif target in _PY_NAMES:
        return f"py::{_PY_NAMES[target]}"
    raise TypeError(f"cannot save a graph calling {target!r}: a torchinn file may only call ATen operators "
                    f"and {sorted(_PY)}")


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
    if kind != "aten" or opname in _DENIED_ATEN or not opname.isidentifier() or not (overload or "default").isidentifier():
        raise FormatError(f"{where} calls {name!r}, which a torchinn file may not call ({_ALLOWED})")
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


# -- metadata ------------------------------------------------------------------------------------

_MAX_NDIM = 32
_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
_TOP_REQUIRED = {"format", "version", "graph", "tensor_names", "trainable", "groups", "partitions", "functions",
                 "contractions", "in_spec", "out_spec", "training"}
_TOP_OPTIONAL = {"torch", "input_shapes", "pinned", "sha256", "input_names", "input_guards"}
_PARTITION_KEYS = {"uniform": {"type", "max_size", "quadrature", "size"},
                   "fixed": {"type", "max_size", "quadrature"},
                   "trainable": {"type", "max_size", "quadrature", "eps"}}
_FUNCTION_REQUIRED = {"plan", "kind", "shape", "block_dims"}
_FUNCTION_OPTIONAL = {"dtype"}


def _keys(obj: Any, field: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(obj, dict):
        raise FormatError(f"{field} must be a JSON object, got {type(obj).__name__}")
    missing = sorted(required - set(obj))
    if missing:
        raise FormatError(f"{field} is missing key(s) {missing}")
    unknown = sorted(set(obj) - required - optional)
    if unknown:
        raise FormatError(f"{field} has unknown key(s) {unknown}")
    return obj


_BUDGET = " (sizes are bounded by the elements the file stores)"


def _int(value: Any, field: str, lo: int, hi: int, note: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{field} must be an int in [{lo}, {hi}]{note}, got {value!r}"[:300])
    if not lo <= value <= hi:
        raise FormatError(f"{field} must be in [{lo}, {hi}]{note}, got {value}")
    return value


def _type(value: Any, field: str, cls: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, cls) or (cls is not bool and isinstance(value, bool)):
        raise FormatError(f"{field} must be {what}, got {value!r}"[:300])
    return value


def _names(value: Any, field: str) -> list[str]:
    _type(value, field, list, "a list of names")
    seen: set[str] = set()
    for i, n in enumerate(value):
        if not isinstance(n, str) or not n or "/" in n:
            raise FormatError(f"{field}[{i}] must be a non-empty name without '/', got {n!r}")
        if n in seen:
            raise FormatError(f"{field} lists {n!r} twice")
        seen.add(n)
    return value


def _plan(value: Any, field: str, groups: dict[str, int], budget: int) -> list[list[tuple[int, str | None, bool]]]:
    """A dimension plan: segments of atoms ``[size, group or null, integrate]``; returns it as tuples."""
    _type(value, field, list, "a list of segments")
    if not value:
        raise FormatError(f"{field} has no segments")
    out = []
    for s, seg in enumerate(value):
        _type(seg, f"{field}[{s}]", list, "a list of atoms")
        if not seg:
            raise FormatError(f"{field}[{s}] has no atoms")
        atoms = []
        for a, atom in enumerate(seg):
            where = f"{field}[{s}][{a}]"
            if not isinstance(atom, list) or len(atom) != 3:
                raise FormatError(f"{where} must be [size, group or null, integrate], got {atom!r}")
            size, group, integrate = atom
            _int(size, f"{where} size", 1, budget, _BUDGET)
            _type(integrate, f"{where} integrate", bool, "true or false")
            if group is not None:
                if not _among(group, groups):
                    raise FormatError(f"{where} names unknown group {group!r}")
                if size != groups[group]:
                    raise FormatError(f"{where}: group {group!r} has {groups[group]} channels (its partition's "
                                      f"max_size), but the atom has size {size}")
            elif integrate:
                raise FormatError(f"{where}: only group atoms can be integrated")
            atoms.append((size, group, integrate))
        out.append(atoms)
    return out


def _plan_size(plan: list) -> int:
    return sum(math.prod(a[0] for a in seg) for seg in plan)


def _stored(tensors: dict[str, Tensor], name: str, field: str, ndim: int | None = None) -> Tensor:
    if name not in tensors:
        raise FormatError(f"{field}: the file has no tensor {name!r}")
    t = tensors[name]
    if ndim is not None and t.ndim != ndim:
        raise FormatError(f"{field}: tensor {name!r} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    return t


def _partition(name: str, info: Any, tensors: dict[str, Tensor], budget: int, used: set[str]) -> None:
    field = f"partitions[{name!r}]"
    kind = info.get("type") if isinstance(info, dict) else None
    if not _among(kind, _PARTITION_KEYS):
        raise FormatError(f"{field}.type must be one of {sorted(_PARTITION_KEYS)}, got {kind!r}")
    _keys(info, field, _PARTITION_KEYS[kind], {"mix", "train_mix"} if kind == "trainable" else set())
    max_size = _int(info["max_size"], f"{field}.max_size", 1, budget, _BUDGET)
    if not _among(info["quadrature"], QUADRATURES):
        raise FormatError(f"{field}.quadrature must be one of {sorted(QUADRATURES)}, got {info['quadrature']!r}")
    prefix = f"p/{name}/"
    if kind == "uniform":
        _int(info["size"], f"{field}.size", 1, max_size)
    elif kind == "fixed":
        pts = _stored(tensors, prefix + "points", field, 1)
        used.add(prefix + "points")
        if not pts.is_floating_point() or not 1 <= pts.numel() <= max_size:
            raise FormatError(f"{field}: points must be 1 to {max_size} floats, got {pts.numel()} {pts.dtype}")
    else:
        eps = info["eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
            raise FormatError(f"{field}.eps must be a number in [0, 1), got {eps!r}")
        mix = info.get("mix", 1.0)
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not -1e6 <= mix <= 1e6:
            raise FormatError(f"{field}.mix must be a finite number (1: quadrature weights, 0: selection), got {mix!r}"[:300])
        _type(info.get("train_mix", False), f"{field}.train_mix", bool, "true or false")
        delta = _stored(tensors, prefix + "delta", field, 1)
        free = _stored(tensors, prefix + "free", field, 1)
        used.update((prefix + "delta", prefix + "free"))
        if not delta.is_floating_point() or not 2 <= delta.numel() <= max_size + 1:
            raise FormatError(f"{field}: delta must hold 2 to {max_size + 1} floats (size + 1 gaps), got "
                              f"{delta.numel()} {delta.dtype}")
        if free.dtype != torch.uint8 or free.shape != delta.shape or bool((free > 1).any()) or not bool(free.any()):
            raise FormatError(f"{field}: free must be {delta.numel()} uint8 flags (0 or 1, at least one 1), got "
                              f"{free.numel()} {free.dtype} with {int(free.bool().sum())} ones")


def _function(name: str, info: Any, tensors: dict[str, Tensor], groups: dict[str, int], budget: int,
              used: set[str]) -> int:
    """Check one tensor's continuous function; returns its number of elements."""
    field = f"functions[{name!r}]"
    _keys(info, field, _FUNCTION_REQUIRED, _FUNCTION_OPTIONAL)
    if not _among(info.get("kind"), KINDS):
        raise FormatError(f"{field}.kind must be one of {list(KINDS)}, got {info.get('kind')!r}")
    if not _among(info.get("dtype", "float32"), _FLOAT_DTYPES):
        raise FormatError(f"{field}.dtype must be one of {sorted(_FLOAT_DTYPES)}, got {info.get('dtype')!r}")
    shape = _type(info["shape"], f"{field}.shape", list, "a list of ints")
    if not 1 <= len(shape) <= _MAX_NDIM:
        raise FormatError(f"{field}.shape must have 1 to {_MAX_NDIM} dimensions, got {len(shape)}")
    for d, n in enumerate(shape):
        _int(n, f"{field}.shape[{d}]", 1, budget, _BUDGET)
    numel = math.prod(shape)
    if numel > budget:
        raise FormatError(f"{field}.shape {shape} has {numel} elements, more than this file's tensors can hold "
                          f"(at most {budget})")
    plan = _type(info["plan"], f"{field}.plan", list, "a list of dimension plans")
    if len(plan) != len(shape):
        raise FormatError(f"{field}.plan has {len(plan)} dimensions but shape {shape} has {len(shape)}")
    plan = [_plan(p, f"{field}.plan[{d}]", groups, budget) for d, p in enumerate(plan)]
    for d, p in enumerate(plan):
        if _plan_size(p) != shape[d]:
            raise FormatError(f"{field}.plan[{d}] covers {_plan_size(p)} positions but shape[{d}] is {shape[d]}")
    prefix = f"f/{name}/"
    stored = sum(1 for k in tensors if k.startswith(prefix))
    blocks = math.prod(len(p) for p in plan)
    if blocks != stored:
        raise FormatError(f"{field}: the plan cuts the tensor into {blocks} block(s), but the file stores {stored}")
    block_dims = _type(info["block_dims"], f"{field}.block_dims", list, "a list of lists")
    if len(block_dims) != blocks:
        raise FormatError(f"{field}.block_dims has {len(block_dims)} entries for {blocks} block(s)")
    for i, key in enumerate(itertools.product(*(range(len(p)) for p in plan))):
        atoms = [a for d, s in enumerate(key) for a in plan[d][s]]
        values = _stored(tensors, f"{prefix}{i}", field)
        used.add(f"{prefix}{i}")
        want = tuple(a[0] for a in atoms)
        if tuple(values.shape) != want or not values.is_floating_point():
            raise FormatError(f"{field}: tensor {prefix}{i} must be floats of shape {want}, got "
                              f"{values.dtype} {tuple(values.shape)}")
        dims = [pos for pos, a in enumerate(atoms) if a[1] is not None]
        if block_dims[i] != dims:
            raise FormatError(f"{field}.block_dims[{i}] must be {dims} (the group atoms' positions), "
                              f"got {block_dims[i]!r}")
    return numel


def _spec(text: Any, field: str) -> pytree.TreeSpec:
    _type(text, field, str, "a string")
    try:
        return pytree.treespec_loads(text)
    except (ValueError, TypeError, KeyError, IndexError, NotImplementedError, AttributeError, RecursionError) as err:
        raise FormatError(f"{field}: not a tree structure ({type(err).__name__}: {err})"[:500]) from err


def check_tensors(tensors: dict[str, Tensor], trainable: Any) -> None:
    """Stored float tensors hold no NaN, and no Inf either except in fixed tensors that are not
    trained (constants such as an attention mask may hold -inf); ``trainable``: tensor names."""
    for name, t in tensors.items():
        if not t.is_floating_point():
            continue
        strict = not name.startswith("x/") or name[2:] in trainable
        ok = torch.isfinite(t) if strict else ~torch.isnan(t)
        if not bool(ok.all()):
            what = "NaN/Inf" if strict else "NaN"
            raise FormatError(f"tensor {name!r} has {int((~ok).sum())} {what} values; a torchinn model has "
                              f"{'finite' if strict else 'no NaN in its'} tensors")


def check_meta(meta: Any, tensors: dict[str, Tensor]) -> tuple[pytree.TreeSpec, pytree.TreeSpec, fx.Graph]:
    """Check every field of a version-1 file against its tensors; returns the input and output
    tree specs and the rebuilt graph. Sizes in the metadata are bounded by ``budget``: 4 times the
    elements the file stores (plus 4096)."""
    _keys(meta, "metadata", _TOP_REQUIRED, _TOP_OPTIONAL)
    budget = 4 * sum(t.numel() for t in tensors.values()) + 4096
    names = _names(meta["tensor_names"], "tensor_names")
    keys = [n.replace(".", "/") for n in names]
    if len(set(keys)) != len(keys):
        raise FormatError("tensor_names has names that differ only in '.' and '/'")
    trainable = _names(meta["trainable"], "trainable")
    if set(trainable) - set(names):
        raise FormatError(f"trainable names unknown tensor(s) {sorted(set(trainable) - set(names))[:5]}")
    _type(meta["training"], "training", bool, "true or false")
    _type(meta.get("torch", ""), "torch", str, "a version string")
    sha = _type(meta.get("sha256", "0" * 64), "sha256", str, "64 hex digits")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise FormatError(f"sha256 must be 64 hex digits, got {sha[:80]!r}")
    used: set[str] = set()

    groups = _type(meta["groups"], "groups", list, "a list")
    for i, g in enumerate(groups):
        _keys(g, f"groups[{i}]", {"name", "members"})
    group_names = _names([g["name"] for g in groups], "groups[].name")
    parts = _type(meta["partitions"], "partitions", dict, "an object")
    if set(parts) != set(group_names):
        raise FormatError(f"partitions must have one entry per group; groups without one: "
                          f"{sorted(set(group_names) - set(parts))[:5]}, entries without a group: "
                          f"{sorted(set(parts) - set(group_names))[:5]}")
    for name in group_names:
        _partition(name, parts[name], tensors, budget, used)
    max_sizes = {n: parts[n]["max_size"] for n in group_names}

    functions = _type(meta["functions"], "functions", dict, "an object")
    if set(functions) - set(names):
        raise FormatError(f"functions names unknown tensor(s) {sorted(set(functions) - set(names))[:5]}")
    total = sum(_function(n, functions[n], tensors, max_sizes, budget, used) for n in names if n in functions)
    if total > budget:
        raise FormatError(f"functions declare {total} elements, more than the file's tensors can hold ({budget})")
    # every group is the channels of a stored tensor: its max_size is bounded by what the file holds
    planned = {a[1] for f in functions.values() for dim in f["plan"] for seg in dim for a in seg}
    unplanned = [g for g in group_names if g not in planned]
    if unplanned:
        raise FormatError(f"groups {unplanned[:5]} are in no tensor's plan (functions[...].plan)")
    ndims = {}
    for n in names:
        if n in functions:
            ndims[n] = len(functions[n]["shape"])
        else:
            ndims[n] = _stored(tensors, f"x/{n}", f"tensor_names: fixed tensor {n!r}").ndim
            used.add(f"x/{n}")
    extra = sorted(set(tensors) - used)
    if extra:
        raise FormatError(f"the file stores tensors the metadata does not describe: {extra[:5]}")
    for i, g in enumerate(groups):
        members = _type(g["members"], f"groups[{i}].members", list, "a list of [tensor, dim]")
        for j, m in enumerate(members):
            if not isinstance(m, list) or len(m) != 2 or not _among(m[0], ndims):
                raise FormatError(f"groups[{i}].members[{j}] must be [a tensor name, dim], got {m!r}"[:300])
            _int(m[1], f"groups[{i}].members[{j}] dim", 0, ndims[m[0]] - 1)

    contractions = _type(meta["contractions"], "contractions", list, "a list")
    for i, c in enumerate(contractions):
        field = f"contractions[{i}]"
        _keys(c, field, {"plan", "ndim", "dim", "mean"})
        ndim = _int(c["ndim"], f"{field}.ndim", 1, _MAX_NDIM)
        _int(c["dim"], f"{field}.dim", 0, ndim - 1)
        _type(c["mean"], f"{field}.mean", bool, "true or false")
        if _plan_size(_plan(c["plan"], f"{field}.plan", max_sizes, budget)) > budget:
            raise FormatError(f"{field}.plan covers more positions than the file's tensors can hold ({budget})")

    in_spec, out_spec = _spec(meta["in_spec"], "in_spec"), _spec(meta["out_spec"], "out_spec")
    num_inputs = in_spec.num_leaves
    shapes = _type(meta.get("input_shapes", []), "input_shapes", list, "a list")
    if len(shapes) > num_inputs:
        raise FormatError(f"input_shapes has {len(shapes)} entries for {num_inputs} input(s)")
    for i, s in enumerate(shapes):
        if s is not None:
            _type(s, f"input_shapes[{i}]", list, "null or a list")
            if len(s) > _MAX_NDIM:
                raise FormatError(f"input_shapes[{i}] has more than {_MAX_NDIM} dimensions")
            for d, n in enumerate(s):
                if n is not None:
                    _int(n, f"input_shapes[{i}][{d}]", 0, 2**62)
    pinned = _type(meta.get("pinned", {}), "pinned", dict, "an object")
    for k, v in pinned.items():
        _type(v, f"pinned[{k!r}]", str, "a string")
    input_names = _type(meta.get("input_names", []), "input_names", list, "a list")
    if len(input_names) > num_inputs:
        raise FormatError(f"input_names has {len(input_names)} entries for {num_inputs} input(s)")
    for i, n in enumerate(input_names):
        _type(n, f"input_names[{i}]", str, "a string")
        if len(n) > 200:
            raise FormatError(f"input_names[{i}] is longer than 200 characters")
    guards = _type(meta.get("input_guards", []), "input_guards", list, "a list")
    if len(guards) > 1000:
        raise FormatError(f"input_guards has {len(guards)} entries; at most 1000")
    for i, g in enumerate(guards):
        field = f"input_guards[{i}]"
        _type(g, field, dict, "an object")
        _keys(g, field, {"expr", "text", "kind"}, set())
        _type(g["text"], f"{field}.text", str, "a string")
        if not _among(g["kind"], ("shape", "range", "value")):
            raise FormatError(f"{field}.kind must be 'shape', 'range' or 'value', got {g['kind']!r}"[:300])
        guard_expr(g["expr"], f"{field}.expr", num_inputs)
    limits = {"tensors": len(names), "sizes": len(group_names), "scales": len(contractions)}
    graph = graph_from_json(meta["graph"], num_inputs, out_spec.num_leaves, limits)
    return in_spec, out_spec, graph


def guard_expr(value: Any, field: str, num_inputs: int, depth: int = 0) -> Any:
    """A saved guard expression (:mod:`torchinn.graph.guards`) back as a tuple tree: lists
    ``["dim", i, d]``, ``["input", i]`` and ``[op, *args]`` with ``op`` a known operation;
    numbers, strings, booleans and null as they are; ``{"f": "inf"}`` for non-finite floats."""
    from .graph.guards import OPS

    if depth > 32:
        raise FormatError(f"{field} is nested more than 32 levels deep")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        _keys(value, field, {"f"}, set())
        if not _among(value["f"], ("inf", "-inf", "nan")):
            raise FormatError(f"{field}.f must be 'inf', '-inf' or 'nan', got {value['f']!r}"[:300])
        return float(value["f"])
    _type(value, field, list, "a list, a number, a string, a boolean or null")
    if not value:
        raise FormatError(f"{field} is an empty list")
    head = value[0]
    if isinstance(head, str) and head in ("dim", "input"):
        if len(value) != (3 if head == "dim" else 2):
            raise FormatError(f"{field}: {head!r} takes {2 if head == 'dim' else 1} argument(s)")
        _int(value[1], f"{field}[1]", 0, max(0, num_inputs - 1))
        if head == "dim":
            _int(value[2], f"{field}[2]", 0, _MAX_NDIM - 1)
        return tuple(value)
    if not isinstance(head, str) or head not in OPS:
        raise FormatError(f"{field}: unknown operation {head!r}; known: {sorted(OPS)}"[:300])
    if len(value) > 17:
        raise FormatError(f"{field}: {head!r} has more than 16 arguments")
    return (head, *(guard_expr(v, f"{field}[{k}]", num_inputs, depth + 1) for k, v in enumerate(value[1:], 1)))
