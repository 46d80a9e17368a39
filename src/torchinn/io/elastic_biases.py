"""The per-size offsets of an elastic network's deployed sizes of kinds ``"scales-bias"`` (bias
corrections) and ``"scales-refit"`` (bias corrections and refit weights) in a ``.inn`` file (:mod:`torchinn.io.format`): written as tensors ``e/<i>/offset/<tensor name>``
with their names listed in ``elastic.deployed[i].biases``, and read back, each checked against
the shape its tensor has at that size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..elastic.network import DeployedSize
from ..maths.structured import plan_size
from ..model.groups import module_key
from ..model.integral_model import IntegralModel
from .graph import FormatError

__all__ = ["OFFSET_KINDS", "biases_from", "biases_state"]

#: the kinds of deployed size that carry per-size offsets
OFFSET_KINDS = ("scales-bias", "scales-refit")


def biases_state(i: int, d: DeployedSize, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """The JSON keys of deployed size ``i``'s offsets (none unless kind ``"scales-bias"`` or
    ``"scales-refit"``; their tensors added to ``tensors``)."""
    if d.kind not in OFFSET_KINDS:
        return {}
    for n, b in d.biases.items():
        tensors[f"e/{i}/offset/{n}"] = b.detach()
    return {"biases": sorted(d.biases)}


def biases_from(i: int, info: Mapping[str, Any], imodel: IntegralModel, sizes: Mapping[str, int],
                tensors: Mapping[str, Tensor]) -> dict[str, nn.Parameter]:
    """The offsets of deployed size ``i`` (its JSON ``info``, at group ``sizes``), each a
    tensor of the model whose stored correction has the tensor's shape at those sizes."""
    field = f"elastic.deployed[{i}].biases"
    names = info.get("biases", [])
    if info.get("kind") not in OFFSET_KINDS:
        if "biases" in info:
            raise FormatError(f"{field} is only for kinds {list(OFFSET_KINDS)}, got kind {info.get('kind')!r}"[:300])
        return {}
    if not isinstance(names, list) or any(not isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise FormatError(f"{field} must be a list of distinct tensor names, got {str(names)[:80]}")
    plans = imodel.plans()
    out = {}
    for n in names:
        if n not in imodel.tensor_names:
            raise FormatError(f"{field} names {n!r}, not a tensor of the model"[:300])
        key = f"e/{i}/offset/{n}"
        if key not in tensors:
            raise FormatError(f"{field}[{n!r}]: the file has no tensor {key!r}"[:300])
        t = tensors[key]
        shape = tuple(plan_size(p, dict(imodel.sizes(), **sizes)) for p in plans[n]) if n in plans \
            else tuple(getattr(imodel.fixed, module_key(n)).shape)
        if not t.is_floating_point() or tuple(t.shape) != shape or not math.isfinite(float(t.abs().sum())):
            raise FormatError(f"{field}[{n!r}]: {key} must hold finite floats of shape {shape} (the tensor at this "
                              f"size), got {tuple(t.shape)} {t.dtype}"[:300])
        out[n] = nn.Parameter(t.clone())
    return out
