"""The ``config`` of a Hugging Face model that comes back from :meth:`IntegralModel.to_discrete`.

:func:`~torchinn.rebuild.rebuild` resizes the layers of a copy of the user's model; a Hugging
Face model also describes its sizes in ``model.config`` (``num_attention_heads``,
``num_key_value_heads``, ``intermediate_size``, GPT-2's ``n_inner``), which ``save_pretrained``
writes and ``from_pretrained`` builds from. When every layer has the same sizes, the copy's
config gets the new values, so that it round-trips; the values are accepted only if the same class
built from the new config (on the meta device, no memory) has exactly the copy's parameter shapes.
With per-layer sizes no single config describes the model: the config is left as it was (a debug
log says so), and the model is saved with ``torch.save`` or as a state dict of the returned
module (see docs/decisions/transformers.md).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["update_config"]

log = logging.getLogger(__name__)

#: config fields that count attention heads (the second follows the first under GQA)
HEADS = ("num_key_value_heads", "num_attention_heads")
#: config fields that hold an MLP width (``None`` in GPT-2's ``n_inner`` means 4 x hidden)
WIDTHS = ("intermediate_size", "n_inner", "ffn_dim", "hidden_size")


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in module.named_parameters()}


def update_config(module: nn.Module, resized: Mapping[int, set[int]]) -> bool:
    """Write the new sizes into ``module.config`` (a copy's: changed in place) when they are
    uniform. ``resized``: full size -> the current sizes of the groups of that full size.
    Returns whether the config now describes ``module``."""
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "to_dict") or not hasattr(type(module), "_from_config"):
        return False
    uniform = {full: next(iter(new)) for full, new in resized.items() if len(new) == 1}
    changes: dict[str, Any] = {}
    for field in WIDTHS:
        value = getattr(config, field, None)
        if field == "n_inner" and value is None and isinstance(getattr(config, "n_embd", None), int):
            value = 4 * config.n_embd
        if isinstance(value, int) and value in uniform and uniform[value] != value:
            changes[field] = uniform[value]
    kv = getattr(config, HEADS[0], None)
    heads = getattr(config, HEADS[1], None)
    if isinstance(kv, int) and kv in uniform and uniform[kv] != kv and isinstance(heads, int):
        changes[HEADS[0]] = uniform[kv]
        changes[HEADS[1]] = heads // kv * uniform[kv]  # the query heads of each kv head go along
    elif isinstance(heads, int) and heads in uniform and uniform[heads] != heads:
        changes[HEADS[1]] = uniform[heads]
        if isinstance(kv, int) and kv == heads:
            changes[HEADS[0]] = uniform[heads]
    if not changes:
        return _matches(module, config)
    head_dim = getattr(config, "head_dim", None)
    if HEADS[1] in changes and head_dim is None and isinstance(getattr(config, "hidden_size", None), int):
        changes["head_dim"] = config.hidden_size // heads  # the head size stays
    candidate = copy.deepcopy(config)
    for k, v in changes.items():
        setattr(candidate, k, v)
    if not _matches(module, candidate):
        log.debug("the config of %s is left at its full sizes: the sizes differ between layers "
                  "(changes %s do not give the model's shapes)", type(module).__name__, changes)
        return False
    for k, v in changes.items():
        setattr(config, k, v)
    return True


def _matches(module: nn.Module, config: Any) -> bool:
    try:
        with torch.device("meta"):
            fresh = type(module)._from_config(config)
    except Exception:  # noqa: BLE001 - a config the class refuses does not describe the model
        return False
    return _shapes(fresh) == _shapes(module)
