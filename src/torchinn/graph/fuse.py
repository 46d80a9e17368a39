"""Fold batch norms into the convolution or linear layer before them (eval-mode statistics).

``y = gamma * (W x + b - mean) / sqrt(var + eps) + beta`` is a conv/linear with weight
``W * gamma / sqrt(var + eps)`` (scaled along its output channels) and a new bias, exactly. A norm
is folded only where that is exact: its input comes straight from a conv/linear whose weight is a
parameter used nowhere else and whose output feeds only this norm. Other norms stay, and their
parameters and statistics become functions of their channel group.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from .trace import Traced

aten = torch.ops.aten

__all__ = ["Folded", "fuse_batch_norms"]


@dataclass(frozen=True)
class Folded:
    """One folded norm: the names of its tensors (``weight``/``bias`` may be ``None``), its
    ``eps``, the producer's weight and bias names, whether that bias was added by the folding
    (the producer had none), and the producer weight's output-channel dimension."""

    weight: str | None
    bias: str | None
    mean: str
    var: str
    eps: float
    producer_weight: str
    producer_bias: str
    bias_added: bool
    axis: int

_PRODUCERS = {
    aten.conv1d: 0, aten.conv2d: 0, aten.conv3d: 0, aten.linear: 0,
    aten.conv_transpose1d: 1, aten.conv_transpose2d: 1, aten.conv_transpose3d: 1,
}


def _norm_args(node: fx.Node) -> tuple | None:
    """(input, weight, bias, mean, var, eps) of an eval-mode batch norm node, else None."""
    packet = getattr(node.target, "overloadpacket", None)
    if packet is aten.batch_norm:
        if len(node.args) < 8 or node.args[5]:
            return None
        return node.args[0], node.args[1], node.args[2], node.args[3], node.args[4], node.args[7]
    if node.target is aten._native_batch_norm_legit_no_training.default:
        users = list(node.users)
        if any(u.target is not operator.getitem or u.args[1] != 0 for u in users):
            return None
        return node.args[0], node.args[1], node.args[2], node.args[3], node.args[4], node.args[6]
    return None


def fuse_batch_norms(traced: Traced) -> list[str]:
    """Fold every foldable batch norm in place (graph and tensors); returns the folded norms'
    weight names (or running-mean names when they have no weight)."""
    graph = traced.graph
    folded: list[str] = []
    first_input = traced.inputs[0] if traced.inputs else None
    for node in list(graph.nodes):
        spec = _norm_args(node)
        if spec is None:
            continue
        x, weight, bias, mean, var, eps = spec
        if not isinstance(x, fx.Node) or len(x.users) != 1:
            continue
        axis = _PRODUCERS.get(getattr(x.target, "overloadpacket", None))
        if axis is None:
            continue
        w_node = x.args[1]
        b_node = x.args[2] if len(x.args) > 2 else x.kwargs.get("bias")
        if w_node not in traced.source or len(w_node.users) != 1:
            continue
        if b_node is not None and (b_node not in traced.source or len(b_node.users) != 1):
            continue
        if axis == 1 and (x.args[6] if len(x.args) > 6 else 1) != 1:
            continue  # grouped transposed conv: out channels are not weight dim 1 alone
        tensors = traced.tensors
        names = {k: traced.source.get(v) if isinstance(v, fx.Node) else None
                 for k, v in (("weight", weight), ("bias", bias), ("mean", mean), ("var", var))}
        if names["mean"] is None or names["var"] is None:
            continue
        if any(isinstance(v, fx.Node) and v not in traced.source for v in (weight, bias)):
            continue
        w_name = traced.source[w_node]
        mu, v = tensors[names["mean"]].double(), tensors[names["var"]].double()
        gamma = tensors[names["weight"]].double() if names["weight"] else torch.ones_like(mu)
        beta = tensors[names["bias"]].double() if names["bias"] else torch.zeros_like(mu)
        scale = gamma / torch.sqrt(v + eps)
        W = tensors[w_name]
        shape = [1] * W.ndim
        shape[axis] = -1
        b_old = tensors[traced.source[b_node]].double() if b_node is not None else torch.zeros_like(mu)
        tensors[w_name] = (W.double() * scale.reshape(shape)).to(W.dtype)
        new_bias = ((b_old - mu) * scale + beta).to(W.dtype)
        if b_node is not None:
            b_name = traced.source[b_node]
            tensors[b_name] = new_bias
        else:
            b_name = w_name.rsplit(".", 1)[0] + ".bias" if "." in w_name else "bias"
            while b_name in tensors:
                b_name += "_"
            tensors[b_name] = new_bias
            traced.trainable.add(b_name)
            with graph.inserting_before(first_input) if first_input is not None else graph.inserting_before(x):
                ph = graph.placeholder(b_name.replace(".", "_") + "_folded")
            ph.meta["val"] = w_node.meta["val"].new_empty(new_bias.shape)
            traced.source[ph] = b_name
            args = list(x.args)
            while len(args) < 3:
                args.append(None)
            args[2] = ph
            x.args = tuple(args)
            x.kwargs = {k: v for k, v in x.kwargs.items() if k != "bias"}
        out = node if node.target.overloadpacket is aten.batch_norm else next(iter(node.users))
        out.replace_all_uses_with(x)
        for n in ([out, node] if out is not node else [node]):
            graph.erase_node(n)
        folded.append(names["weight"] or names["mean"])
        traced.folded.append(Folded(names["weight"], names["bias"], names["mean"], names["var"], float(eps),
                                    w_name, b_name, b_node is None, axis))
    for ph in [n for n in graph.nodes if n.op == "placeholder" and n in traced.source and not n.users]:
        name = traced.source.pop(ph)
        traced.tensors.pop(name, None)
        traced.trainable.discard(name)
        graph.erase_node(ph)
    graph.lint()
    return folded
