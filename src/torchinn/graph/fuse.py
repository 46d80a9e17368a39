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

from .kinds import Kind, kind_of, node_kind
from .trace import Traced

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



def _norm_args(node: fx.Node) -> tuple | None:
    """(input, weight, bias, mean, var, eps) of an eval-mode batch norm node (of kind
    ``"batch_norm"``, see :mod:`.kinds`), else None."""
    if node.op != "call_function":
        return None
    kind = kind_of(node.target)
    if kind is None or kind.name != "batch_norm":
        return None
    args = node.args
    if max(i for i in (kind.input, kind.weight, kind.bias, kind.mean, kind.var, kind.eps, kind.training)
           if i is not None) >= len(args):
        return None
    if kind.training is not None and args[kind.training]:
        return None
    if _returns_tuple(node) and any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users):
        return None
    return (args[kind.input], kind.arg(args, "weight"), kind.arg(args, "bias"), args[kind.mean], args[kind.var],
            args[kind.eps])


def _returns_tuple(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return schema is not None and len(schema.returns) > 1


def _producer(x: fx.Node) -> tuple[Kind, int] | None:
    """The kind of the layer computing ``x`` and its weight's output-channel dimension, when a
    norm after it can be folded into its weight: an exact linear or convolution (see
    :mod:`.kinds`) whose transposed form is not grouped."""
    if x.op != "call_function":
        return None
    kind = node_kind(x.target, x.args)
    if kind is None or not kind.exact or kind.name not in ("linear", "conv", "conv_transpose"):
        return None
    if kind.name == "conv_transpose" and kind.arg(x.args, "groups", 1) != 1:
        return None  # grouped transposed conv: out channels are not weight dim 1 alone
    return kind, kind.weight_out


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
        producer = _producer(x)
        if producer is None:
            continue
        kind, axis = producer
        w_node = kind.arg(x.args, "weight")
        b_node = kind.arg(x.args, "bias") if kind.bias is not None and kind.bias < len(x.args) else x.kwargs.get("bias")
        if w_node not in traced.source or len(w_node.users) != 1:
            continue
        if b_node is not None and (b_node not in traced.source or len(b_node.users) != 1):
            continue
        if b_node is None and kind.bias is None:
            continue  # no argument to put the folded bias in
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
            while len(args) <= kind.bias:
                args.append(None)
            args[kind.bias] = ph
            x.args = tuple(args)
            x.kwargs = {k: v for k, v in x.kwargs.items() if k != "bias"}
        out = next(iter(node.users)) if _returns_tuple(node) else node
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
