"""The ``config`` of a Hugging Face model that comes back from :meth:`IntegralModel.to_discrete`.

:func:`~torchinn.discrete.rebuild.rebuild` resizes the layers of a copy of the user's model; a Hugging
Face model also describes its sizes in ``model.config`` (``num_attention_heads``,
``num_key_value_heads``, ``intermediate_size``, GPT-2's ``n_inner``), which ``save_pretrained``
writes and ``from_pretrained`` builds from. When every layer has the same sizes, the copy's
config gets the new values, so that it round-trips; the values are accepted only if the same class
built from the new config (on the meta device, no memory) has exactly the copy's parameter shapes.
When no config describes the model (per-layer sizes, or fewer heads in GPT-2 or BERT, whose
configs derive the head size as hidden / heads), the config is left as it was, a
``UserWarning`` names the fields and why, and the copy's ``save_pretrained`` (and so
``push_to_hub``) raises :class:`ConfigMismatchError` instead of writing a config that
``from_pretrained`` cannot load: the model is saved with :func:`torchinn.io.save_pretrained` (a
folder with a shapes file, or padded to one config with ``pad=True``; see
docs/decisions/per-layer-sizes.md).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["ConfigMismatchError", "update_config"]

log = logging.getLogger(__name__)

#: config fields that count attention heads (the second follows the first under GQA)
HEADS = ("num_key_value_heads", "num_attention_heads")
#: config fields that hold an MLP width (``None`` in GPT-2's ``n_inner`` means 4 x hidden; Falcon: ``ffn_hidden_size``)
WIDTHS = ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "hidden_size")


class ConfigMismatchError(ValueError):
    """``save_pretrained`` of a resized Hugging Face model whose config cannot describe it."""


class RefuseSave:
    """Stands in for ``save_pretrained`` on a model whose config cannot describe it (picklable,
    so the refusal survives ``torch.save``)."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise ConfigMismatchError(self.message)


def _field(config: Any, name: str) -> str:
    """The config's own name of a field (GPT-2 says ``n_head`` for ``num_attention_heads``)."""
    return getattr(config, "attribute_map", {}).get(name, name)


def _why(config: Any, resized: Mapping[int, set[int]], changes: Mapping[str, Any]) -> str:
    per_layer = {full: sorted(new) for full, new in resized.items() if len(new) > 1}
    heads = getattr(config, HEADS[1], None)
    if per_layer:
        return (f"the sizes differ between layers (channels of full size {', '.join(f'{f} now {n}' for f, n in per_layer.items())}), "
                "and its config has one value for all layers")
    derived = isinstance(getattr(type(config), "head_dim", None), property)  # Falcon: hidden_size // heads
    if HEADS[1] in changes and (getattr(config, "head_dim", None) is None or derived):
        hidden = getattr(config, "hidden_size", None)
        return (f"its config has no head size field{' (head_dim is a property)' if derived else ''}: the head "
                f"size is derived as {_field(config, 'hidden_size')} / "
                f"{_field(config, HEADS[1])} ({hidden} / {heads}), so {changes[HEADS[1]]} heads of "
                f"{hidden // heads if isinstance(hidden, int) and heads else '?'} channels at the same hidden size "
                "cannot be said")
    return f"no setting of its size fields gives the model's parameter shapes (tried {dict(changes)})"


def _unsaveable(module: nn.Module, config: Any, resized: Mapping[int, set[int]], changes: Mapping[str, Any]) -> None:
    """Warn that ``config`` does not describe ``module`` and make its ``save_pretrained`` refuse."""
    changed = {full for full, new in resized.items() if new != {full}}  # per-layer sizes: the fields of those
    fields = sorted({_field(config, k) for k in changes if getattr(config, k, None) is not None}
                    or {_field(config, k) for k in (*WIDTHS, *HEADS) if getattr(config, k, None) in changed}
                    or {_field(config, HEADS[1])})
    now = ", ".join(f"{f}={getattr(config, f, None)}" for f in fields)
    name = type(module).__name__
    message = (f"{name} at these sizes cannot be described by its {type(config).__name__}: {_why(config, resized, changes)}. "
               f"model.config still says {now} (the full sizes), so a config saved by save_pretrained would not load "
               "with from_pretrained; save it with torchinn.io.save_pretrained(model, directory) (read back by "
               "torchinn.io.load_pretrained; pad=True writes a folder plain transformers loads, where the sizes can be "
               "padded: MLP widths, and heads where the config states head_dim) "
               "(docs/decisions/per-layer-sizes.md)")
    warnings.warn(f"to_discrete(): {message}; save_pretrained and push_to_hub raise ConfigMismatchError on it",
                  UserWarning, stacklevel=6)  # the caller of to_discrete()
    module.save_pretrained = RefuseSave(f"refusing to save_pretrained: {message}")


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
        if _matches(module, config):
            return True
        if any(new != {full} for full, new in resized.items()):  # resized, and no field says how
            _unsaveable(module, config, resized, changes)
        return False
    head_dim = getattr(config, "head_dim", None)
    if HEADS[1] in changes and head_dim is None and isinstance(getattr(config, "hidden_size", None), int):
        changes["head_dim"] = config.hidden_size // heads  # the head size stays
    candidate = copy.deepcopy(config)
    for k, v in changes.items():
        setattr(candidate, k, v)
    if not _matches(module, candidate):
        _unsaveable(module, config, resized, changes)
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
