"""The template of the user's module that :meth:`IntegralModel.to_discrete` rebuilds from
(:class:`Original`: a copy whose integral tensors are on ``meta``, and the example inputs), and
the error raised when it cannot carry the current sizes (:class:`RebuildError`)."""

from __future__ import annotations

import copy
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

__all__ = ["Original", "RebuildError", "make_original"]


class RebuildError(Exception):
    """The user's module cannot carry the current sizes (the message says which part and why)."""


class Original:
    """The user's module as a template (tensors of the integral model on ``meta``) and the example
    inputs it was converted on. Deep copies keep it; pickling (``torch.save``) drops it, since the
    user's class may not be importable where the file is loaded."""

    def __init__(self, module: nn.Module | None, example: tuple | None,
                 kwargs: dict[str, Any] | None = None) -> None:
        self.module, self.example, self.kwargs = module, example, dict(kwargs or {})

    def __deepcopy__(self, memo: dict) -> Original:
        return Original(copy.deepcopy(self.module, memo), copy.deepcopy(self.example, memo),
                        copy.deepcopy(self.kwargs, memo))

    def __getstate__(self) -> dict:
        return {"module": None, "example": None, "kwargs": {}}

    def __setstate__(self, state: dict) -> None:
        self.module, self.example = state.get("module"), state.get("example")
        self.kwargs = dict(state.get("kwargs") or {})


def make_original(model: nn.Module, example_inputs: tuple, names: set[str],
                  kwargs: dict[str, Any] | None = None) -> Original:
    """A template of ``model`` whose tensors named in ``names`` (or tied to one that is) are on the
    meta device, and the example inputs (``kwargs``: keyword ones); ``model`` is not modified."""
    aliases: dict[int, list[str]] = {}
    tensors: dict[int, Tensor] = {}
    for name, t in chain(model.named_parameters(remove_duplicate=False),
                         model.named_buffers(remove_duplicate=False)):
        aliases.setdefault(id(t), []).append(name)
        tensors[id(t)] = t
    memo: dict[int, Any] = {}
    for key, alias in aliases.items():
        if any(a in names for a in alias):
            t = tensors[key]
            meta = torch.empty_like(t, device="meta")
            memo[key] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    module = copy.deepcopy(model, memo)
    example, kwargs = pytree.tree_map(lambda x: x.detach().clone() if isinstance(x, Tensor) else x,
                                      (example_inputs, dict(kwargs or {})))
    return Original(module, example, kwargs)
