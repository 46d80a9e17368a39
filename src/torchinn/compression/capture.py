"""Activations at one layer of a graph module, for the refit (:mod:`torchinn.compression.refit`):
:class:`Capture` runs a graph up to a layer and returns the layer's input and output.

The layer is an op of a layer kind (:mod:`torchinn.graph.kinds`); its input is the argument the
kind names. The output is the op's own when the kind is exact, else the output of the layer's
map (:func:`layer_map`: ``F.linear``, the product or the convolution of its input, weight and
bias), which is what the refit fits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx
from torch.utils import _pytree as pytree

from ..graph.kinds import Kind, node_kind

__all__ = ["Capture", "Stop", "bound_args", "layer_map"]


def bound_args(node: fx.Node, args: tuple, kwargs: dict) -> list[Any]:
    """The arguments of a call of ``node``'s op in the order of its schema, keyword ones and
    defaults filled in (None where an argument has none)."""
    out = []
    for i, a in enumerate(node.target._schema.arguments):
        if i < len(args):
            out.append(args[i])
        elif a.name in kwargs:
            out.append(kwargs[a.name])
        else:
            out.append(a.default_value if a.has_default_value() else None)
    return out


def layer_map(kind: Kind, values: list[Any]) -> Tensor:
    """The map of a layer op (``kind``, on its :func:`bound_args` ``values``): ``F.linear``, the
    matrix product, or the convolution of its input, weight and bias."""
    x, w, b = kind.arg(values, "input"), kind.arg(values, "weight"), kind.arg(values, "bias")
    if kind.name == "linear":
        return F.linear(x, w, b)
    if kind.name in ("mm", "matmul"):
        y = torch.matmul(x, w)
        return y + b if b is not None else y
    if kind.name != "conv":
        raise ValueError(f"no layer map for an op of kind {kind.name!r}")
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.ndim - 2]
    stride, padding, dilation = values[kind.stride:kind.stride + 3]
    return conv(x, w, b, stride, padding, dilation, kind.arg(values, "groups", 1))


class Stop(Exception):
    """Raised at the captured node (no args: fx would format them into its message)."""

    inputs: Tensor
    output: Tensor


class Capture(fx.Interpreter):
    """Runs a graph up to one node and returns (its input activation, its output).

    Layers are refit in graph order, and a refit changes only the layer's own weights (in
    place), so the values computed before a node stay valid for the nodes after it: each capture
    keeps, per batch, the interpreter's live values where it stopped, and the next capture of that
    batch resumes from there (one forward pass per batch over all layers instead of one per
    layer). A node at or before the last stop starts over from the inputs. The kept values of all
    batches together take at most ``max_saved`` bytes (the network's own tensors and its inputs
    not counted): a batch whose values would not fit is run again from its inputs at its next
    capture."""

    def __init__(self, gm: fx.GraphModule, max_saved: int) -> None:
        super().__init__(gm)
        self.max_saved = max_saved
        self.extra_traceback = False
        self.node = ""
        self.order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        self.saved: dict[int, tuple[int, dict[fx.Node, Any]]] = {}
        self.saved_bytes: dict[int, int] = {}
        self.own = {t.untyped_storage().data_ptr() for t in [*gm.parameters(), *gm.buffers()]}

    def _held_bytes(self, env: dict[fx.Node, Any]) -> int:
        """Bytes of the tensors in ``env`` that are neither the network's own nor its inputs (each
        storage once)."""
        seen, total = set(self.own), 0
        for node, value in env.items():
            if node.op == "placeholder":  # the batch: the caller holds it anyway
                continue
            for t in pytree.tree_leaves(value):
                if isinstance(t, Tensor):
                    storage = t.untyped_storage()
                    if storage.data_ptr() not in seen:
                        seen.add(storage.data_ptr())
                        total += storage.nbytes()
        return total

    def run_node(self, n: fx.Node) -> Any:
        if n.name != self.node:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        values = bound_args(n, args, kwargs)
        kind = node_kind(n.target, values)
        if kind is None or not kind.is_layer:
            raise RuntimeError(f"node {n.name!r} ({n.target}) is not a linear layer or convolution")
        out = n.target(*args, **kwargs) if kind.exact else layer_map(kind, values)
        stop = Stop()
        stop.inputs, stop.output = kind.arg(values, "input"), out
        raise stop

    def capture(self, inputs: tuple, node: str, key: int) -> tuple[Tensor, Tensor]:
        """(input, output) of ``node`` on ``inputs``, the batch named ``key``."""
        self.node, pos = node, self.order[node]
        last, env = self.saved.pop(key, (len(self.order), None))
        self.saved_bytes.pop(key, None)
        if env is not None:
            if last >= pos:
                env = None
            else:  # placeholders take the inputs again, in order; the nodes before the stop
                # whose values were freed (every user ran) are marked done
                env = {n: env.get(n) for n in self.graph.nodes if self.order[n.name] < last and n.op != "placeholder"}
        kwargs = getattr(inputs, "kwargs", None) or {}  # keyword inputs follow, in the traced order
        info = getattr(self.module.graph._codegen, "pytree_info", None)
        order = [n for n in info.orig_args if n in kwargs] if info is not None and kwargs else list(kwargs)
        flat = self.module.graph._codegen.process_inputs(*inputs, *(kwargs[n] for n in order))
        try:
            self.run(*flat, initial_env=env)
        except Stop as stop:
            held = self._held_bytes(self.env)
            if held + sum(self.saved_bytes.values()) <= self.max_saved:
                self.saved[key], self.saved_bytes[key] = (pos, self.env), held
            return stop.inputs, stop.output
        raise RuntimeError(f"node {self.node!r} was not reached")
