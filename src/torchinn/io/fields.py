"""The basic field checks of a ``.inn`` file's metadata (used by :mod:`torchinn.io.checks` and
:mod:`torchinn.io.elastic_checks`): JSON objects with their keys, bounded ints, types, stored
tensors and partitions. Every problem raises :class:`FormatError` naming the field.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..maths.quadrature import QUADRATURES
from .graph import FormatError, _among

__all__: list[str] = []

_PARTITION_KEYS = {"uniform": {"type", "max_size", "quadrature", "size"},
                   "fixed": {"type", "max_size", "quadrature"},
                   "trainable": {"type", "max_size", "quadrature", "eps"}}
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
