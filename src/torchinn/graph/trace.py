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
import inspect
import io
import logging
import operator
import os
import re
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind
from torch.utils import _pytree as pytree

from .adapters import prepare
from .guards import Guard, collect, violation

__all__ = ["Traced", "clone_inputs", "clone_written_inputs", "trace", "node_location"]

log = logging.getLogger(__name__)


@dataclass
class Traced:
    """A network as a graph plus its tensors.

    ``graph`` takes, in order, one placeholder per entry of ``tensors`` that it uses (looked up in
    ``source``) and then the user inputs (``inputs``, flattened with ``in_spec``).
    """

    graph: fx.Graph
    tensors: dict[str, Tensor]          # name -> tensor (parameters, buffers, constants), each its own storage
    trainable: set[str]                 # names of nn.Parameters
    source: dict[fx.Node, str]          # placeholder -> qualified name
    inputs: list[fx.Node]               # user-input placeholders
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    module_of: dict[str, str] = field(default_factory=dict)  # parameter name -> module type name
    guards: list[Guard] = field(default_factory=list)  # conditions on the inputs (see .guards)
    static_dims: set[tuple[int, int]] = field(default_factory=set)  # (input, dim) kept at its size
    doubled: bool = False  # traced on the example with its batch of 1 repeated twice
    #: the ``(args, kwargs)`` the graph was traced on (the example, or its doubled batch)
    example: tuple = ((), {})
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


def _dynamic_shapes(model: nn.Module, args: Sequence[Any], kwargs: dict[str, Any], batch_only: bool = False
                    ) -> Any:
    """Every dimension dynamic, or only the batch (dimension 0) when ``batch_only``."""
    def spec(x: Any) -> Any:
        if isinstance(x, Tensor):
            # a dimension of size 0 or 1 would be specialized anyway (with a warning per convert)
            dims = range(min(x.ndim, 1) if batch_only else x.ndim)
            return {d: Dim.AUTO for d in dims if x.shape[d] > 1} if x.ndim else None
        return None
    if not kwargs:
        return tuple(pytree.tree_map(spec, a) if not isinstance(a, Tensor) else spec(a) for a in args)
    # keyword inputs: torch.export wants the specs by parameter name (``**kwargs`` as one dict)
    bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    return {k: pytree.tree_map(spec, v) if not isinstance(v, Tensor) else spec(v) for k, v in bound.items()}


def _doubled_batch(args: Any) -> Any:
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


def clone_inputs(args: Any) -> Any:
    """Copies of the tensors in ``args`` (a pytree): torchinn runs the user's model on these, never
    on the caller's tensors, which a ``forward`` writing in place to its input would change.
    ``torch.export`` also remembers on a tensor which of its dimensions were dynamic, so a static
    retry on the same tensors would trace them dynamic again."""
    def copy_(x: Any) -> Any:
        if not isinstance(x, Tensor):
            return x
        y = x.detach().clone()
        return y.requires_grad_(x.requires_grad) if x.requires_grad and y.is_floating_point() else y
    return pytree.tree_map(copy_, args)


def _export(model: nn.Module, args: tuple, kwargs: dict[str, Any], double: bool = True
            ) -> tuple[ExportedProgram, tuple[tuple, dict[str, Any]], bool]:
    """Export ``model`` on ``(args, kwargs)``: the batch (doubled when it is 1) and the other sizes
    dynamic, then the batch only (a network that reshapes to sizes of its own, or an export that
    reads the image size, still takes any batch), then static. A static graph is traced on the
    user's own batch first: a batch of 2 made from an example of 1 would then refuse the batch the
    user gave. Returns the program and the inputs it was traced on, and whether they are the
    doubled ones."""
    doubled = _doubled_batch((args, kwargs)) if double else None
    user = (args, kwargs)
    attempts = [(doubled, "all", True), (user, "all", False), (doubled, "batch", True), (user, "batch", False),
                (user, None, False), (doubled, None, True)]
    tried = []
    last_error: Exception | None = None
    for example, dynamic, is_doubled in attempts:
        if example is None:
            continue
        a, kw = clone_inputs(example)
        shapes = _dynamic_shapes(model, a, kw, batch_only=dynamic == "batch") if dynamic else None
        key = (is_doubled, repr(shapes) if pytree.tree_leaves(shapes) else "static")
        if key in tried:  # the same export as one already tried (the batch was all that was dynamic)
            continue
        tried.append(key)
        with _quiet() as stderr:
            try:
                return torch.export.export(model, a, kwargs=kw or None, dynamic_shapes=shapes), example, is_doubled
            except Exception as err:  # noqa: BLE001 - retried with fewer dynamic dims, then reported
                last_error = err
        log.debug("export attempt failed (dynamic=%s): %s\n%s", dynamic, last_error, stderr.getvalue())
    if "which is not a known type" in str(last_error):  # an output object pytree cannot open
        why = ("the model returns an object torch.export cannot put in a graph output (a key/value "
               "cache: convert with use_cache=False, or return tensors, tuples, dicts or dataclasses).")
    elif (where := _value_read(last_error)) is not None:
        why = (f"the forward reads the values of a tensor in Python{where} (.item(), .tolist(), "
               ".numpy(), bool() or an if on a tensor). torch.export sees the inputs, parameters "
               "and buffers by their shapes only, so even a constant buffer's values cannot be read "
               "while tracing: keep such constants as Python numbers (networks converted from ONNX "
               "read their Resize scales, Slice bounds and Reshape shapes from tensors this way).")
    else:
        why = ("torchinn needs a model that torch.export can trace (data-dependent Python control "
               "flow on tensor values is not traceable; shape checks are fine).")
    raise RuntimeError(f"torch.export could not trace {type(model).__name__}: {last_error}\n{why}"
                       ) from last_error


#: the messages of torch.export's errors for a value read in Python (a guard on an unbacked
#: symbol, ``.numpy()`` of a fake tensor, a value read passed on where a number is needed)
_VALUE_READS = ("data-dependent", "is not supported for tensor subclasses", "found element of type Sym")


def _value_read(err: Exception | None) -> str | None:
    """Where ``err`` says the forward read a tensor's values in Python: " in module 'p/Resize/0'"
    (a call_module of an fx.GraphModule), " at file.py:84 in forward", "" when it does not say,
    or None when ``err`` is not about reading values."""
    text = str(err)
    if err is None or not any(m in text for m in _VALUE_READS):
        return None
    module = re.search(r"call_module\[target=([^\]]+)\]", text)
    if module:
        return f" in module '{module.group(1)}'"
    line = re.search(r"Caused by: \((.+?)\)", text)
    if line:
        return f" at {line.group(1)}"
    torch_dir = os.path.dirname(torch.__file__)
    user = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(torch_dir)]
    return f" at {os.path.basename(user[-1].filename)}:{user[-1].lineno} in {user[-1].name}" if user else ""


#: higher-order ops that only wrap a region of the forward in a grad or autocast mode
#: (``@torch.no_grad()`` on a rotary embedding's forward): their bodies are inlined
_WRAPPERS = ("wrap_with_set_grad_enabled", "wrap_with_autocast")


def inline_wrapped(graph: fx.Graph, root: nn.Module) -> None:
    """Replace every call of a grad/autocast wrapper in ``graph`` by the body it wraps (a
    submodule of ``root``), so that every op is visible to the analysis. Gradient and autocast
    modes inside the region are dropped: the region is traced in float32 on buffers (cos/sin
    tables), and the integral model's own training decides what gets gradients."""
    for node in list(graph.nodes):
        if node.op != "call_function" or getattr(node.target, "__name__", "") not in _WRAPPERS:
            continue
        k = next(i for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a.op == "get_attr")
        body: fx.GraphModule = getattr(root, node.args[k].target)
        body_graph = copy.deepcopy(body.graph)
        inline_wrapped(body_graph, body)
        env: dict[fx.Node, Any] = dict(zip(body_graph.find_nodes(op="placeholder"), node.args[k + 1:]))
        outputs: Any = ()
        with graph.inserting_before(node):
            for n in body_graph.nodes:
                if n.op == "output":
                    outputs = fx.node.map_arg(n.args[0], lambda x: env[x])
                elif n.op != "placeholder":
                    env[n] = graph.node_copy(n, lambda x: env[x])
        for user in list(node.users):
            if user.target is not operator.getitem:
                raise RuntimeError(f"unexpected use of {node.target} at node '{user.name}'")
            user.replace_all_uses_with(outputs[user.args[1]])
            graph.erase_node(user)
        wrapped = node.args[k]
        graph.erase_node(node)
        if not wrapped.users:
            graph.erase_node(wrapped)


def _alias_roots(node: fx.Node, roots: dict[fx.Node, set[str]]) -> set[str]:
    """The inputs whose memory the output of ``node`` may share (a view, or an in-place op's
    result), from the alias annotations of its schema (``view(Tensor(a) self) -> Tensor(a)``)."""
    if node.target is operator.getitem:
        return set(roots.get(node.args[0], ()))
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return set()
    sets = {s for r in schema.returns if r.alias_info is not None for s in r.alias_info.before_set}
    out: set[str] = set()
    for i, a in enumerate(schema.arguments):
        if a.alias_info is None or not sets & set(a.alias_info.before_set):
            continue
        value = node.kwargs.get(a.name) if a.kwarg_only or i >= len(node.args) else node.args[i]
        for v in value if isinstance(value, (list, tuple)) else (value,):
            out |= roots.get(v, set()) if isinstance(v, fx.Node) else set()
    return out


def _written(node: fx.Node) -> list[Any]:
    """The arguments ``node`` writes to (``mul_(Tensor(a!) self, ...)``, ``copy_``, ``out=``)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return []
    out = []
    for i, a in enumerate(schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            value = node.kwargs.get(a.name) if a.kwarg_only or i >= len(node.args) else node.args[i]
            out.extend(value if isinstance(value, (list, tuple)) else (value,))
    return out


def clone_written_inputs(graph: fx.Graph, inputs: Sequence[fx.Node]) -> list[str]:
    """Make every in-place write to a user input (``x.mul_(2)``, ``x[:, 0] = 0``, also through a
    view of it) write to a copy: the graph computes what the ``forward`` returns and never
    changes the caller's tensor (its side effect on the input is not reproduced). Returns the
    names of the inputs copied."""
    roots: dict[fx.Node, set[str]] = {n: {n.name} for n in inputs}
    written: set[str] = set()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        for v in _written(node):
            if isinstance(v, fx.Node):
                written |= roots.get(v, set())
        alias = _alias_roots(node, roots)
        if alias:
            roots[node] = alias
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for x in inputs:
        if x.name in written:
            with graph.inserting_after(last):
                copy_ = graph.call_function(torch.ops.aten.clone.default, (x,))
            copy_.meta = dict(x.meta)
            x.replace_all_uses_with(copy_, delete_user_cb=lambda user: user is not copy_)
    return sorted(written)


def _user_guards(ep: ExportedProgram
                 ) -> tuple[fx.GraphModule, list[fx.Node], list[Guard], set[tuple[int, int]]]:
    """The graph module of ``ep``, its user-input placeholders, their guards and static dims."""
    gm = ep.graph_module
    user = [n for n, spec in zip(gm.graph.find_nodes(op="placeholder"), ep.graph_signature.input_specs)
            if spec.kind == InputKind.USER_INPUT]
    guards, static_dims = collect(ep, user, [n.name for n in user])
    return gm, user, guards, static_dims


def _refuses_batch_one(user: Sequence[fx.Node], guards: Sequence[Guard],
                       static_dims: set[tuple[int, int]]) -> bool:
    """Whether a graph traced on a doubled batch of 1 (``user``: its input placeholders) refuses
    that batch of 1: its batch is static, or an input of that batch breaks one of ``guards``."""
    if any(d == 0 for _, d in static_dims):
        return True
    vals = [n.meta.get("val") for n in user]
    flat = [torch.empty((1, *(s if isinstance(s, int) else s.node.hint for s in v.shape[1:])), device="meta")
            if isinstance(v, Tensor) else v for v in vals]
    return violation(guards, flat, [n.name for n in user]) is not None


def trace(model: nn.Module, example_inputs: tuple, kwargs: dict[str, Any] | None = None) -> Traced:
    """Export ``model`` (a copy in eval mode; ``model`` is not modified) called as
    ``model(*example_inputs, **kwargs)`` and collect its tensors. Key/value caches are switched
    off in the copy (see :func:`.adapters.prepare`)."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    kwargs = dict(kwargs or {})
    module = prepare(copy.deepcopy(model).eval())
    try:
        with torch.no_grad():
            module(*clone_inputs(example_inputs), **clone_inputs(kwargs))
    except Exception as err:  # noqa: BLE001 - reported with its cause
        raise RuntimeError(f"{type(model).__name__} fails on the example inputs "
                           f"({type(err).__name__}: {err}); pass inputs the model accepts") from err
    ep, traced_on, doubled = _export(module, example_inputs, kwargs)
    gm, user, guards, static_dims = _user_guards(ep)
    if doubled and _refuses_batch_one(user, guards, static_dims):
        # traced with the batch of 1 doubled, the graph would refuse the example's own batch: a
        # guard torchinn cannot express kept the batch static at 2, or a guard on a product of sizes
        # holds only at 2 (a normaliser sqrt(n * h * w)); traced again on the example as given
        ep, traced_on, doubled = _export(module, example_inputs, kwargs, double=False)
        gm, user, guards, static_dims = _user_guards(ep)
    graph = copy.deepcopy(gm.graph)
    inline_wrapped(graph, gm)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    specs = ep.graph_signature.input_specs
    if len(specs) != len(placeholders):
        raise RuntimeError("unexpected exported program: signature and placeholders differ")
    tensors: dict[str, Tensor] = {}
    storages: set[int] = set()  # the exported copy's storages taken as they are (it is ours)
    own = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
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
            # ``module`` is a private copy of the model: its tensors are taken without another copy
            # of the whole state; one storage read under two names (tied weights) is cloned, and so
            # is a constant that is not the copy's (a tensor the forward reads from elsewhere), so
            # every name owns its values (convert permutes them in place)
            ptr = value.untyped_storage().data_ptr()
            taken = ptr and ptr not in storages and ptr in own
            tensors[name] = value.detach() if taken else value.detach().clone()
            storages.add(ptr)
            if spec.kind == InputKind.PARAMETER:
                trainable.add(name)
            source[node] = name
        else:
            raise RuntimeError(f"unsupported graph input kind {spec.kind} ({node.name})")
    clone_written_inputs(graph, inputs)
    module_of = {}
    for name, mod in module.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            module_of[f"{name}.{pname}" if name else pname] = type(mod).__name__
    sig = ep.module_call_graph[0].signature
    return Traced(graph=graph, tensors=tensors, trainable=trainable, source=source, inputs=inputs,
                  in_spec=sig.in_spec, out_spec=sig.out_spec, module_of=module_of, guards=guards,
                  static_dims=static_dims, doubled=doubled,
                  example=clone_inputs(traced_on))
