"""Checks of the ``elastic`` field of a ``.inn`` file (used by :mod:`torchinn.io.checks`): the
rankings, curves and deployed sizes an :class:`torchinn.elastic.ElasticNetwork` is saved with.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .fields import _int, _keys, _partition, _stored, _type
from .graph import FormatError, _among

__all__ = ["check_elastic"]


_MAX_CURVE_POINTS = 64


def check_elastic(value: Any, max_sizes: dict[str, int], tensors: dict[str, Tensor] | None = None,
                  budget: int = 0, used: set[str] | None = None) -> None:
    """The ``elastic`` field of a file written from a :class:`torchinn.elastic.ElasticNetwork`:
    ``{"orders": {group: a permutation of range(max_size)}, "curves": {group: [[ratio, error],
    ...]}, "low": a ratio or null}``, every group one of the file's; optionally ``"deployed": [{"target",
    "sizes", "partitions" (trainable, tensors e/<i>/<group>/), "kind" ("partitions", the default, or
    "scales": no partitions, "scales" the groups below full size, tensors e/<i>/<group>/log_scale; or
    "scales-bias" / "scales-refit": the same and "biases", tensor names, tensors e/<i>/offset/<name>)}]``
    and ``"active"`` (null or a target)."""
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
    t = _keys(d, field, {"target", "sizes", "partitions"}, {"kind", "scales", "biases"})["target"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
        raise FormatError(f"{field}.target must be a fraction in (0, 1), got {t!r}"[:300])
    sizes = _type(d["sizes"], f"{field}.sizes", dict, "an object (group -> size)")
    for g, k in sizes.items():
        if not _among(g, max_sizes):
            raise FormatError(f"{field}.sizes names unknown group {g!r}"[:300])
        _int(k, f"{field}.sizes[{g!r}]", 1, max_sizes[g])
    kind = d.get("kind", "partitions")
    if not _among(kind, _KINDS):
        raise FormatError(f"{field}.kind must be one of {list(_KINDS)}, got {kind!r}"[:300])
    partitions = _type(d["partitions"], f"{field}.partitions", dict, "an object (group -> partition)")
    if kind in ("scales", "scales-bias", "scales-refit"):
        _scales(field, d.get("scales"), partitions, sizes, max_sizes, tensors, used, i)
    elif "scales" in d:
        raise FormatError(f"{field}.scales is only for kinds 'scales', 'scales-bias' and 'scales-refit', this deployed size is of "
                          f"kind {kind!r}")
    if kind in ("scales-bias", "scales-refit"):  # the names and shapes are checked against the model's tensors on load
        for n in _type(d.get("biases", []), f"{field}.biases", list, "a list of tensor names"):
            used.add(f"e/{i}/offset/{n}")
            # bias corrections are 1-d; a refit weight's offset has its weight's shape (checked on load)
            _stored(tensors, f"e/{i}/offset/{n}", f"{field}.biases[{str(n)[:80]!r}]", 1 if kind == "scales-bias" else None)
    elif "biases" in d:
        raise FormatError(f"{field}.biases is only for kinds 'scales-bias' and 'scales-refit', this deployed size is of kind {kind!r}")
    for g, info in partitions.items():
        where = f"{field}.partitions[{g!r}]"[:200]
        if not _among(g, sizes) or not isinstance(info, dict) or info.get("type") != "trainable" \
                or info.get("max_size") != max_sizes[g]:
            raise FormatError(f"{where} must be a trainable partition of a group of {field}.sizes, at its max_size")
        _partition(g, info, tensors, budget, used, f"e/{i}/{g}/", where)
        if (n := tensors[f"e/{i}/{g}/delta"].numel() - 1) != sizes[g]:
            raise FormatError(f"{where} has {n} points, its size is {sizes[g]}")
    return t


_KINDS = ("partitions", "scales", "scales-bias", "scales-refit")


def _scales(field: str, scales: Any, partitions: dict, sizes: dict, max_sizes: dict[str, int],
            tensors: dict[str, Tensor], used: set[str], i: int) -> None:
    """A deployed size of kind ``"scales"``: no partitions (its points are the ranked top-``k``),
    ``scales`` the groups below full size, each with a tensor ``e/<i>/<group>/log_scale`` of one
    float per kept channel."""
    if partitions:
        raise FormatError(f"{field}.partitions must be empty for kind 'scales' (its points are the ranked "
                          f"top-k channels), got {sorted(partitions)[:5]}"[:300])
    _type(scales, f"{field}.scales", list, "a list of the groups below their full size")
    below = sorted(g for g, k in sizes.items() if k < max_sizes[g])
    if any(not isinstance(g, str) for g in scales) or len(set(scales)) != len(scales) or sorted(scales) != below:
        raise FormatError(f"{field}.scales must list the groups of {field}.sizes below their full size "
                          f"{below[:5]}, got {scales[:5]}"[:300])
    for g in scales:
        name = f"e/{i}/{g}/log_scale"
        t = _stored(tensors, name, f"{field}.scales[{g!r}]"[:200], 1)
        used.add(name)
        if not t.is_floating_point() or t.numel() != sizes[g]:
            raise FormatError(f"{field}.scales[{g!r}]: {name} must hold {sizes[g]} floats (one per kept channel), "
                              f"got {t.numel()} {t.dtype}"[:300])
