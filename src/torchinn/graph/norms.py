"""Batch norms in a traced graph: which nodes they are, and which tensors hold their running statistics."""

from __future__ import annotations

import operator
from typing import Any

from torch import fx

from .kinds import Kind, kind_of

__all__ = ["batch_norm_kind", "is_batch_norm", "norm_statistics"]


def is_batch_norm(node: fx.Node) -> bool:
    """Whether ``node`` is a batch norm that can train (see :func:`batch_norm_kind`)."""
    return batch_norm_kind(node) is not None


def batch_norm_kind(node: fx.Node) -> Kind | None:
    """The kind (see :mod:`.kinds`) of ``node`` if it is a batch norm that can train (has a
    ``training`` flag and a ``momentum``), else None."""
    if node.op != "call_function":
        return None
    kind = kind_of(node.target)
    ok = kind is not None and kind.name == "batch_norm" and kind.training is not None and kind.momentum is not None
    return kind if ok else None


def norm_statistics(runtime: fx.GraphModule, tensor_names: list[str]) -> list[tuple[str, str]]:
    """``(running_mean, running_var)`` tensor names of every batch norm of a runtime graph that
    keeps running statistics (:func:`is_batch_norm`, reading both from the tensor list)."""
    tensors_ph = next((n for n in runtime.graph.nodes if n.op == "placeholder"), None)

    def name_of(arg: Any) -> str | None:
        if (isinstance(arg, fx.Node) and arg.op == "call_function" and arg.target is operator.getitem
                and arg.args[0] is tensors_ph):
            return tensor_names[arg.args[1]]
        return None

    out = []
    for node in runtime.graph.nodes:
        kind = batch_norm_kind(node)
        if kind is not None and max(kind.mean, kind.var) < len(node.args):
            mean, var = name_of(node.args[kind.mean]), name_of(node.args[kind.var])
            if mean is not None and var is not None and (mean, var) not in out:
                out.append((mean, var))
    return out
