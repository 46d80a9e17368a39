"""Batch norms in a traced graph: which nodes they are, and which tensors hold their running statistics."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

__all__ = ["is_batch_norm", "norm_statistics"]

aten = torch.ops.aten


def is_batch_norm(node: fx.Node) -> bool:
    return node.op == "call_function" and getattr(node.target, "overloadpacket", None) is aten.batch_norm


def norm_statistics(runtime: fx.GraphModule, tensor_names: list[str]) -> list[tuple[str, str]]:
    """``(running_mean, running_var)`` tensor names of every batch norm of a runtime graph that
    keeps running statistics (``aten.batch_norm`` reading both from the tensor list)."""
    tensors_ph = next((n for n in runtime.graph.nodes if n.op == "placeholder"), None)

    def name_of(arg: Any) -> str | None:
        if (isinstance(arg, fx.Node) and arg.op == "call_function" and arg.target is operator.getitem
                and arg.args[0] is tensors_ph):
            return tensor_names[arg.args[1]]
        return None

    out = []
    for node in runtime.graph.nodes:
        if is_batch_norm(node) and len(node.args) > 4:
            mean, var = name_of(node.args[3]), name_of(node.args[4])
            if mean is not None and var is not None and (mean, var) not in out:
                out.append((mean, var))
    return out
