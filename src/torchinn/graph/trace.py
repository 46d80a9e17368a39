"""Trace a network into an ATen graph with ``torch.export``.

``torch.export`` (non-strict) runs the model's Python with fake tensors, so a ``forward`` with
shape checks, ``x.view(x.size(0), -1)``, functional calls on raw parameters or attention code
traces as written; parameters appear as graph inputs named by their qualified names, so every
use of every weight is visible. The batch and spatial/token dimensions are traced as dynamic
(``Dim.AUTO``), so the networks built from the graph accept other batch and image sizes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind
from torch.utils import _pytree as pytree

from .guards import Guard, collect

__all__ = ["Traced", "trace", "node_location"]

log = logging.getLogger(__name__)


@dataclass
class Traced:
    """A network as a graph plus its tensors.

    ``graph`` takes, in order, one placeholder per entry of ``tensors`` that it uses (looked up in
    ``source``) and then the user inputs (``inputs``, flattened with ``in_spec``).
    """

    graph: fx.Graph
    tensors: dict[str, Tensor]          # qualified name -> tensor (parameters, buffers, constants)
    trainable: set[str]                 # names of nn.Parameters
    source: dict[fx.Node, str]          # placeholder -> qualified name
    inputs: list[fx.Node]               # user-input placeholders
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    module_of: dict[str, str] = field(default_factory=dict)  # parameter name -> module type name
    guards: list[Guard] = field(default_factory=list)  # conditions on the inputs (see .guards)
    static_dims: set[tuple[int, int]] = field(default_factory=set)  # (input, dim) kept at its size
    doubled: bool = False  # traced on the example with its batch of 1 repeated twice
    #: batch norms folded by :func:`.fuse.fuse_batch_norms`: one :class:`~.fuse.Folded` each
    folded: list = field(default_factory=list)


def node_location(node: fx.Node) -> str:
    """``file:line`` of the user code that produced ``node`` (or its name)."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File ")]
    if lines:
        last = lines[-1]
        try:
            fname = last.split('"')[1].rsplit("/", 1)[-1]
            line = last.split("line ")[1].split(",")[0]
            code = trace.strip().splitlines()[-1].strip()
            return f"{fname}:{line} `{code}`"
        except IndexError:
            return last
    return node.name


def _dynamic_shapes(args: Sequence[Any]) -> Any:
    def spec(x: Any) -> Any:
        if isinstance(x, Tensor):
            # a dimension of size 0 or 1 would be specialized anyway (with a warning per convert)
            return {d: Dim.AUTO for d in range(x.ndim) if x.shape[d] > 1} if x.ndim else None
        return None
    return tuple(pytree.tree_map(spec, a) if not isinstance(a, Tensor) else spec(a) for a in args)


def _doubled_batch(args: tuple) -> tuple | None:
    """The inputs with a batch of 1 repeated twice, so the batch dimension can be traced as dynamic."""
    leaves = [x for x in pytree.tree_leaves(args) if isinstance(x, Tensor)]
    if not leaves or any(x.ndim == 0 or x.shape[0] != 1 for x in leaves):
        return None
    return pytree.tree_map(lambda x: torch.cat([x, x]) if isinstance(x, Tensor) else x, args)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Silence torch while export attempts fail: a failed attempt prints its partial graph to
    stderr and logs warnings, and the one error torchinn raises says what went wrong."""
    names = ["torch"] + [n for n in list(logging.root.manager.loggerDict) if n.startswith("torch.")]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()) as buf, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _fresh(args: tuple) -> tuple:
    """Copies of the tensors in ``args``: ``torch.export`` remembers on a tensor which of its
    dimensions were dynamic, so a static retry on the same tensors would trace them dynamic again
    (and the user's tensors are left as they were)."""
    def copy_(x: Any) -> Any:
        if not isinstance(x, Tensor):
            return x
        y = x.detach().clone()
        return y.requires_grad_(x.requires_grad) if x.requires_grad and y.is_floating_point() else y
    return pytree.tree_map(copy_, args)


def _export(model: nn.Module, args: tuple) -> tuple[ExportedProgram, bool]:
    doubled = _doubled_batch(args)
    attempts = ([(doubled, True)] if doubled is not None else []) + [(args, False)]
    last_error: Exception | None = None
    for example, is_doubled in attempts:
        for dynamic in (True, False):
            fresh = _fresh(example)
            with _quiet() as stderr:
                try:
                    return torch.export.export(
                        model, fresh, dynamic_shapes=_dynamic_shapes(fresh) if dynamic else None
                    ), is_doubled
                except Exception as err:  # noqa: BLE001 - retried with fewer dynamic dims, then reported
                    last_error = err
            log.debug("export attempt failed (dynamic=%s): %s\n%s", dynamic, last_error, stderr.getvalue())
    raise RuntimeError(
        f"torch.export could not trace {type(model).__name__}: {last_error}\n"
        "torchinn needs a model that torch.export can trace (data-dependent Python control flow "
        "on tensor values is not traceable; shape checks are fine)."
    ) from last_error


def trace(model: nn.Module, example_inputs: tuple) -> Traced:
    """Export ``model`` (a copy in eval mode; ``model`` is not modified) and collect its tensors."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    module = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            module(*example_inputs)
    except Exception as err:  # noqa: BLE001 - reported with its cause
        raise RuntimeError(f"{type(model).__name__} fails on the example inputs "
                           f"({type(err).__name__}: {err}); pass inputs the model accepts") from err
    ep, doubled = _export(module, example_inputs)
    gm = ep.graph_module
    user = [n for n, spec in zip(gm.graph.find_nodes(op="placeholder"), ep.graph_signature.input_specs)
            if spec.kind == InputKind.USER_INPUT]
    guards, static_dims = collect(ep, user, [n.name for n in user])
    graph = copy.deepcopy(gm.graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    specs = ep.graph_signature.input_specs
    if len(specs) != len(placeholders):
        raise RuntimeError("unexpected exported program: signature and placeholders differ")
    tensors: dict[str, Tensor] = {}
    trainable: set[str] = set()
    source: dict[fx.Node, str] = {}
    inputs: list[fx.Node] = []
    for node, spec in zip(placeholders, specs):
        if spec.kind == InputKind.USER_INPUT:
            inputs.append(node)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            name = spec.target
            value = ep.state_dict[name] if name in ep.state_dict else ep.constants[name]
            if not isinstance(value, Tensor):
                raise TypeError(f"unsupported constant {name!r} of type {type(value).__name__}")
            tensors[name] = value.detach().clone()
            if spec.kind == InputKind.PARAMETER:
                trainable.add(name)
            source[node] = name
        else:
            raise RuntimeError(f"unsupported graph input kind {spec.kind} ({node.name})")
    module_of = {}
    for name, mod in module.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            module_of[f"{name}.{pname}" if name else pname] = type(mod).__name__
    sig = ep.module_call_graph[0].signature
    return Traced(graph=graph, tensors=tensors, trainable=trainable, source=source, inputs=inputs,
                  in_spec=sig.in_spec, out_spec=sig.out_spec, module_of=module_of, guards=guards,
                  static_dims=static_dims, doubled=doubled)
