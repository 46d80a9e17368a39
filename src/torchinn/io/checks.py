"""Checks of a ``.inn`` file before anything is built from it (used by :mod:`torchinn.io.format`).

A file only *describes* a model: its graph is rebuilt from an allow-list of call targets (the
ATen operators torchinn's export emits, :mod:`torchinn.io.ops`, with bounded sizes and
no writes to inputs, and the handful of Python functions torchinn's graphs use), its input and
output structure is parsed by :mod:`torchinn.io.spec` (nothing imported), its guards
are bounded (:mod:`torchinn.io.guards`), node names and keyword names must be plain
identifiers (they become Python code in ``torch.fx``), and every metadata field is checked for
type, range and agreement with the stored tensors before any tensor is allocated from it. Sizes
declared in the metadata are bounded by the elements the file actually stores, so a small file
cannot ask for gigabytes. Every problem raises :class:`FormatError` naming the field.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor, fx
from torch.utils import _pytree as pytree

from ..maths.functions import KINDS
from ..maths.quadrature import QUADRATURES
from .graph import FormatError, _among, graph_from_json, target_name
from .guards import check_guards
from .ops import check_graph
from .spec import spec_loads

__all__ = ["FormatError", "target_name", "graph_from_json", "check_meta", "check_tensors"]


# -- metadata ------------------------------------------------------------------------------------

_MAX_NDIM = 32
_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
_TOP_REQUIRED = {"format", "version", "graph", "tensor_names", "trainable", "groups", "partitions", "functions",
                 "contractions", "in_spec", "out_spec", "training"}
_TOP_OPTIONAL = {"torch", "input_shapes", "pinned", "sha256", "input_names", "input_guards",
                 "batch_statistics", "elastic"}
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


def _partition(name: str, info: Any, tensors: dict[str, Tensor], budget: int, used: set[str],
               prefix: str | None = None, field: str | None = None) -> None:
    field = field or f"partitions[{name!r}]"
    kind = info.get("type") if isinstance(info, dict) else None
    if not _among(kind, _PARTITION_KEYS):
        raise FormatError(f"{field}.type must be one of {sorted(_PARTITION_KEYS)}, got {kind!r}")
    _keys(info, field, _PARTITION_KEYS[kind], {"mix", "train_mix"} if kind == "trainable" else set())
    max_size = _int(info["max_size"], f"{field}.max_size", 1, budget, _BUDGET)
    if not _among(info["quadrature"], QUADRATURES):
        raise FormatError(f"{field}.quadrature must be one of {sorted(QUADRATURES)}, got {info['quadrature']!r}")
    prefix = prefix or f"p/{name}/"
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


_MAX_CURVE_POINTS = 64


def check_elastic(value: Any, max_sizes: dict[str, int], tensors: dict[str, Tensor] | None = None,
                  budget: int = 0, used: set[str] | None = None) -> None:
    """The ``elastic`` field of a file written from a :class:`torchinn.elastic.ElasticNetwork`:
    ``{"orders": {group: a permutation of range(max_size)}, "curves": {group: [[ratio, error],
    ...]}, "low": a ratio or null}``, every group one of the file's; optionally ``"deployed": [{"target",
    "sizes", "partitions" (trainable, tensors e/<i>/<group>/)}]`` and ``"active"`` (null or a target)."""
    _keys(value, "elastic", {"orders", "curves", "low"}, {"deployed", "active"})
    targets = [_deployed(i, d, max_sizes, tensors or {}, budget, set() if used is None else used)
               for i, d in enumerate(_type(value.get("deployed", []), "elastic.deployed", list, "a list"))]
    active = value.get("active")
    if active is not None and active not in targets:
        raise FormatError(f"elastic.active must be null or one of the deployed targets {targets}, got {active!r}"[:300])
    orders = _type(value["orders"], "elastic.orders", dict, "an object (group -> ranking of its channels)")
    for g, order in orders.items():
        field = f"elastic.orders[{g!r}]"[:200]
        if not _among(g, max_sizes):
            raise FormatError(f"{field} names unknown group")
        n = max_sizes[g]
        _type(order, field, list, f"a list of the {n} channel indices")
        if len(order) != n or any(isinstance(i, bool) or not isinstance(i, int) for i in order) \
                or sorted(order) != list(range(n)):
            raise FormatError(f"{field} must be a permutation of range({n}) (the group's channels, most important "
                              f"first), got {str(order)[:80]}")
    curves = _type(value["curves"], "elastic.curves", dict, "an object (group -> [[ratio, error], ...])")
    for g, curve in curves.items():
        field = f"elastic.curves[{g!r}]"[:200]
        if not _among(g, max_sizes):
            raise FormatError(f"{field} names unknown group")
        _type(curve, field, list, "a list of [ratio, error] pairs")
        if not 1 <= len(curve) <= _MAX_CURVE_POINTS:
            raise FormatError(f"{field} must have 1 to {_MAX_CURVE_POINTS} points, got {len(curve)}")
        for i, pt in enumerate(curve):
            ok = isinstance(pt, list) and len(pt) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in pt)
            if not ok or not 0 < pt[0] <= 1 or pt[1] < 0:
                raise FormatError(f"{field}[{i}] must be [ratio in (0, 1], error >= 0], got {pt!r}"[:300])
    low = value["low"]
    if low is not None and (isinstance(low, bool) or not isinstance(low, (int, float)) or not 0 < low <= 1):
        raise FormatError(f"elastic.low must be null or a number in (0, 1], got {low!r}"[:300])


def _deployed(i: int, d: Any, max_sizes: dict[str, int], tensors: dict[str, Tensor], budget: int,
              used: set[str]) -> float:
    field = f"elastic.deployed[{i}]"
    t = _keys(d, field, {"target", "sizes", "partitions"})["target"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
        raise FormatError(f"{field}.target must be a fraction in (0, 1), got {t!r}"[:300])
    sizes = _type(d["sizes"], f"{field}.sizes", dict, "an object (group -> size)")
    for g, k in sizes.items():
        if not _among(g, max_sizes):
            raise FormatError(f"{field}.sizes names unknown group {g!r}"[:300])
        _int(k, f"{field}.sizes[{g!r}]", 1, max_sizes[g])
    for g, info in _type(d["partitions"], f"{field}.partitions", dict, "an object (group -> partition)").items():
        where = f"{field}.partitions[{g!r}]"[:200]
        if not _among(g, sizes) or not isinstance(info, dict) or info.get("type") != "trainable" \
                or info.get("max_size") != max_sizes[g]:
            raise FormatError(f"{where} must be a trainable partition of a group of {field}.sizes, at its max_size")
        _partition(g, info, tensors, budget, used, f"e/{i}/{g}/", where)
        if (n := tensors[f"e/{i}/{g}/delta"].numel() - 1) != sizes[g]:
            raise FormatError(f"{where} has {n} points, its size is {sizes[g]}")
    return t


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
    if "elastic" in meta:
        check_elastic(meta["elastic"], max_sizes, tensors, budget, used)

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

    in_spec, out_spec = spec_loads(meta["in_spec"], "in_spec"), spec_loads(meta["out_spec"], "out_spec")
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
    _type(meta.get("batch_statistics", False), "batch_statistics", bool, "true or false")
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
    check_guards(meta.get("input_guards", []), num_inputs)
    limits = {"tensors": len(names), "sizes": len(group_names), "scales": len(contractions)}
    graph = graph_from_json(meta["graph"], num_inputs, out_spec.num_leaves, limits)
    check_graph(graph, budget, [max_sizes[n] for n in group_names])
    return in_spec, out_spec, graph
