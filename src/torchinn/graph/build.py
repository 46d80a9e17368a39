"""Build runnable graphs from an analysed network.

Two flavours come from the same traced graph:

* the *runtime* graph of an integral model: tensors, channel sizes and contraction scales are
  inputs, so one compiled graph serves every size (training draws new sizes at every step);
* the *discrete* graph returned by ``to_discrete()``: sizes are constants and tensors are
  attributes of a plain ``torch.fx.GraphModule`` whose parameter names follow the original
  network's (``layer1.0.conv1.weight``), ready for ``torch.compile`` / ``torch.export`` / ONNX.

Arguments that hold channel counts are recomputed by the rewrites recorded in the analysis;
activation contractions over channels get a ``mul`` by a scale vector.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from .analysis import Analysis, Contraction
from .guards import Guard, graph_only, insert_checks
from .labels import Fixed, Prod, Struct, Var

aten = torch.ops.aten

#: the placeholders of a runtime graph before the user inputs
_RUNTIME_ARGS = ("tensors", "sizes", "scales", "training", "norm_training")

__all__ = ["build_runtime", "specialize", "Sizes"]


class Sizes:
    """How a rewrite gets the current number of channels of a dimension."""

    def __init__(self, an: Analysis, graph: fx.Graph, group_index: Mapping[int, int],
                 sizes: fx.Node | Mapping[int, int]) -> None:
        self.an, self.graph, self.group_index, self.sizes = an, graph, group_index, sizes
        self._memo: dict[int, Any] = {}

    def _axis(self, root: int) -> Any:
        if isinstance(self.sizes, Mapping):
            return self.sizes.get(root, self.an.axes.axis_size(root))
        if root not in self.group_index:
            return self.an.axes.axis_size(root)
        if root not in self._memo:
            self._memo[root] = self.graph.call_function(operator.getitem, (self.sizes, self.group_index[root]))
        return self._memo[root]

    def _op(self, fn: Any, a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            return fn(a, b)
        return self.graph.call_function(fn, (a, b))

    def size_of(self, s: Struct) -> Any:
        s = self.an.resolve(s)
        if isinstance(s, Fixed):
            return s.size
        if isinstance(s, Var):
            return self._axis(s.axis)
        out: Any = 1 if isinstance(s, Prod) else 0
        fn = operator.mul if isinstance(s, Prod) else operator.add
        for p in s.parts:
            out = self._op(fn, out, self.size_of(p))
        return out

    def add(self, a: Any, b: Any) -> Any:
        return self._op(operator.add, a, b)

    def scale(self, orig: Any, s: Struct) -> Any:
        """``orig`` (a size in the traced graph, maybe symbolic) scaled from full to current."""
        if isinstance(orig, int):
            return self.size_of(s)
        full = self.an.size(s)
        return self._op(operator.floordiv, self._op(operator.mul, orig, self.size_of(s)), full)


def _flag_nodes(node: fx.Node) -> dict[int, str]:
    """Positional args of ``node`` that say 'training'."""
    packet = getattr(node.target, "overloadpacket", None)
    if packet in (aten.dropout, aten.feature_dropout, aten.alpha_dropout, aten.feature_alpha_dropout):
        return {2: "dropout"}
    if packet in (aten.batch_norm, aten.instance_norm):
        # a norm without running statistics (track_running_stats=False) always uses the batch's
        return {5: "norm"} if len(node.args) > 3 and node.args[3] is not None else {}
    return {}


def _copy_graph(an: Analysis, graph: fx.Graph, tensor_arg: Any, sizes: Sizes, scales: Any,
                training: Any, norm_training: Any, inputs: list[fx.Node]) -> None:
    traced = an.traced
    contractions: dict[fx.Node, list[tuple[int, Contraction]]] = {}
    for i, c in enumerate(an.contractions):
        contractions.setdefault(c.node, []).append((i, c))
    env: dict[fx.Node, Any] = {}
    user_inputs = iter(inputs)
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            if node in traced.source:
                env[node] = tensor_arg(traced.source[node])
            else:
                env[node] = next(user_inputs)
            continue
        if node.op == "output":
            graph.output(fx.node.map_arg(node.args[0], lambda n: env[n]))
            continue
        if node.op != "call_function":
            raise RuntimeError(f"unexpected node {node.op} {node.name}")
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        target = node.target
        for i, c in contractions.get(node, []):
            args = list(args)
            if c.arg >= 0:
                args[c.arg] = graph.call_function(aten.mul.Tensor, (args[c.arg], scales(i)))
            else:  # einsum operand list
                ops = list(args[1])
                k = -1 - c.arg
                ops[k] = graph.call_function(aten.mul.Tensor, (ops[k], scales(i)))
                args[1] = ops
            args = tuple(args)
        for index, kind in _flag_nodes(node).items():
            if len(args) > index:
                args = list(args)
                args[index] = training if kind == "dropout" else norm_training
                args = tuple(args)
        if node in an.rewrites:
            target, args, kwargs = an.rewrites[node](sizes, node, tuple(args), dict(kwargs))
        new = graph.call_function(target, tuple(args), dict(kwargs))
        if new.name.startswith("__"):  # ``aten.__and__``: a dunder name, which .inn files refuse
            new._rename("op" + new.name.rstrip("_"))
        new.meta = dict(node.meta)
        env[node] = new


def build_runtime(an: Analysis, group_index: Mapping[int, int], tensor_names: list[str]) -> fx.GraphModule:
    """``gm(tensors, sizes, scales, training, norm_training, *user_inputs)``: tensors in
    ``tensor_names`` order, sizes in ``group_index`` order, one scale tensor per contraction
    (shaped to broadcast); ``training`` drives dropout, ``norm_training`` unfused norms. The
    guards of the trace (:mod:`.guards`) are checked first, with ``aten._assert_scalar``."""
    graph = fx.Graph()
    tensors = graph.placeholder("tensors")
    sizes_ph = graph.placeholder("sizes")
    scales_ph = graph.placeholder("scales")
    training = graph.placeholder("training")
    norm_training = graph.placeholder("norm_training")
    inputs = [graph.placeholder(n.name) for n in an.traced.inputs]
    insert_checks(graph, an.traced.guards, inputs, [n.name for n in an.traced.inputs])
    index = {name: i for i, name in enumerate(tensor_names)}
    sizes = Sizes(an, graph, group_index, sizes_ph)
    memo: dict[str, fx.Node] = {}

    def tensor_arg(name: str) -> fx.Node:
        if name not in memo:
            memo[name] = graph.call_function(operator.getitem, (tensors, index[name]))
        return memo[name]

    scale_memo: dict[int, fx.Node] = {}

    def scales(i: int) -> fx.Node:
        if i not in scale_memo:
            scale_memo[i] = graph.call_function(operator.getitem, (scales_ph, i))
        return scale_memo[i]

    _copy_graph(an, graph, tensor_arg, sizes, scales, training, norm_training, inputs)
    graph.lint()
    return fx.GraphModule(nn.Module(), graph, class_name="IntegralRuntime")


def _attach(root: nn.Module, name: str, value: Tensor, trainable: bool) -> None:
    *path, leaf = name.split(".")
    mod = root
    for part in path:
        if not hasattr(mod, part):
            mod.add_module(part, nn.Module())
        mod = getattr(mod, part)
    if trainable and value.is_floating_point():
        mod.register_parameter(leaf, nn.Parameter(value))
    else:
        mod.register_buffer(leaf, value)


_FOLD = {operator.mul, operator.add, operator.sub, operator.floordiv}


def _pytree_codegen(in_spec: pytree.TreeSpec, out_spec: pytree.TreeSpec) -> Any:
    """Call and return like the original network (what ``ExportedProgram.module()`` does)."""
    from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

    if in_spec.type is tuple and in_spec.num_children == 2 and in_spec.child(1).type is dict:
        names = [f"arg_{i}" for i in range(in_spec.child(0).num_children)]
        names.extend(in_spec.child(1).context)
    else:
        names = [f"arg_{i}" for i in range(in_spec.num_children)]
    return _PyTreeCodeGen(_PyTreeInfo(names, in_spec, out_spec))


def specialize(runtime: fx.GraphModule, tensor_names: list[str], tensors: list[Tensor],
               sizes: list[int], scales: list[Tensor], trainable: set[str],
               in_spec: pytree.TreeSpec, out_spec: pytree.TreeSpec, guards: Sequence[Guard] = (),
               names: Sequence[str] = (), copies: bool = True) -> fx.GraphModule:
    """The runtime graph at fixed sizes, as a plain ``GraphModule`` that owns its tensors (named
    as in the original network), is called and returns like the original network, and follows
    ``.train()``/``.eval()`` for dropout and norms. It checks the Python inputs of ``guards``
    that the runtime graph leaves to the integral model (str, None, NaN: :func:`.guards.graph_only`).
    ``copies=False``: it holds ``tensors`` themselves (detached, sharing their storage) instead of
    copies."""
    graph = copy.deepcopy(runtime.graph)
    root = nn.Module()
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    last_placeholder = [n for n in graph.nodes if n.op == "placeholder"][-1]
    own = [g for g in guards if graph_only(g)]
    if own:
        user_inputs = [n for n in graph.nodes if n.op == "placeholder"][len(_RUNTIME_ARGS):]
        with graph.inserting_before(last_placeholder.next):
            insert_checks(graph, own, user_inputs, names or [n.name for n in user_inputs], python_values=True)
    with graph.inserting_after(last_placeholder):
        training = graph.get_attr("training")
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not operator.getitem:
            continue
        src, i = node.args
        if src is placeholders["sizes"]:
            node.replace_all_uses_with(sizes[i])
        elif src is placeholders["tensors"]:
            name = tensor_names[i]
            value = tensors[i].detach()
            _attach(root, name, value.clone() if copies else value, name in trainable)
            with graph.inserting_before(node):
                node.replace_all_uses_with(graph.get_attr(name))
        elif src is placeholders["scales"]:
            attr = f"contraction_scale_{i}"
            root.register_buffer(attr, scales[i].detach().clone())
            with graph.inserting_before(node):
                node.replace_all_uses_with(graph.get_attr(attr))
        else:
            continue
        graph.erase_node(node)
    for name in ("training", "norm_training"):
        placeholders[name].replace_all_uses_with(training)
    for node in list(graph.nodes):  # fold integer arithmetic on now-constant sizes
        if node.op == "call_function" and node.target in _FOLD and all(isinstance(a, int) for a in node.args):
            node.replace_all_uses_with(node.target(*node.args))
            graph.erase_node(node)
    for name in _RUNTIME_ARGS:
        graph.erase_node(placeholders[name])
    graph.eliminate_dead_code()
    if _flat_signature(in_spec) and out_spec.is_leaf():
        # positional tensors in, one tensor out: plain code (torch.jit.trace works; jit.script needs
        # the aten overloads replaced by their packets, see IntegralModel.to_discrete)
        output = next(n for n in graph.nodes if n.op == "output")
        result = output.args[0]
        output.args = (result[0] if isinstance(result, (list, tuple)) else result,)
    else:
        graph._codegen = _pytree_codegen(in_spec, out_spec)
    graph.lint()
    return fx.GraphModule(root, graph, class_name="DiscreteNetwork")


def _flat_signature(in_spec: pytree.TreeSpec) -> bool:
    """Called as ``f(*tensors)``: a tuple of (args tuple of leaves, empty kwargs dict)."""
    if in_spec.type is not tuple or in_spec.num_children != 2:
        return False
    args, kwargs = in_spec.child(0), in_spec.child(1)
    return (args.type is tuple and all(args.child(i).is_leaf() for i in range(args.num_children))
            and kwargs.type is dict and kwargs.num_children == 0)
