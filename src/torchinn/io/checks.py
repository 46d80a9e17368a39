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
from .graph import FormatError, _among, graph_from_json, target_name
from .elastic_checks import check_elastic
from .fields import _BUDGET, _int, _keys, _partition, _stored, _type
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
_FUNCTION_REQUIRED = {"plan", "kind", "shape", "block_dims"}
_FUNCTION_OPTIONAL = {"dtype"}


def _names(value: Any, field: str) -> list[str]:
    _type(value, field, list, "a list of names")
    seen: set[str] = set()
    for i, n in enumerate(value):
        # '/' is allowed (onnx2torch names modules 'p2o/Conv/0'): every stored key ends with a
        # fixed suffix or an index after the name, so keys of different names never meet
        if not isinstance(n, str) or not n:
            raise FormatError(f"{field}[{i}] must be a non-empty name, got {n!r}")
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
