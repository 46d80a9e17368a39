"""Save an IntegralModel to one file and load it back without the original network.

The file is a ``safetensors`` file: every tensor (control values, trainable partitions, fixed
tensors) by name, and in its metadata a JSON description of the rest: the runtime graph (node by
node, with ops named like ``aten::conv2d.default``: no pickled or executed code, so loading a
file cannot run arbitrary Python), the groups and their partitions, the tensors' channel plans
and the input/output structure.

>>> import tempfile, torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> imodel = inn.convert(net, (torch.randn(2, 8),))
>>> _ = imodel.resize(0.5)
>>> with tempfile.TemporaryDirectory() as d:
...     inn.save(imodel, f"{d}/net.inn")
...     again = inn.load(f"{d}/net.inn")
>>> again.sizes() == imodel.sizes()
True
"""

from __future__ import annotations

import builtins
import json
import math
import operator
import os
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from .graph.groups import ContractionSpec, GroupInfo
from .integral_model import IntegralModel, _key
from .partition import FixedPartition, GaussLegendrePartition, Partition, TrainablePartition, UniformPartition
from .structured import Atom, StructuredFunction

__all__ = ["save", "load", "FORMAT_VERSION", "FormatError"]

FORMAT = "torchinn.IntegralModel"
FORMAT_VERSION = 1


class FormatError(ValueError):
    """The file is not a torchinn model this version can read."""


# -- graph <-> JSON ------------------------------------------------------------------------------

_FUNCTION_MODULES = {"_operator": operator, "operator": operator, "math": math, "builtins": builtins}
_TORCH_FUNCTIONS = {"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_sum", "sym_ite"}


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        ns = target.namespace
        return f"{ns}::{target._opname}.{target._overloadname}"
    module = getattr(target, "__module__", None)
    name = getattr(target, "__name__", None)
    if module in _FUNCTION_MODULES and hasattr(_FUNCTION_MODULES[module], name or ""):
        return f"py::{_FUNCTION_MODULES[module].__name__}.{name}"
    if module == "torch" and name in _TORCH_FUNCTIONS:
        return f"py::torch.{name}"
    raise TypeError(f"cannot save a graph calling {target!r}")


def _resolve_target(name: str) -> Any:
    kind, _, rest = name.partition("::")
    if kind == "py":
        module, _, fn = rest.rpartition(".")
        if module == "torch" and fn in _TORCH_FUNCTIONS:
            return getattr(torch, fn)
        mod = {"operator": operator, "math": math, "builtins": builtins}.get(module)
        if mod is None or not hasattr(mod, fn):
            raise FormatError(f"unknown function {name!r} in the saved graph")
        return getattr(mod, fn)
    opname, _, overload = rest.partition(".")
    try:
        return getattr(getattr(getattr(torch.ops, kind), opname), overload or "default")
    except (AttributeError, RuntimeError) as err:
        raise FormatError(f"this torch has no operator {name!r} used by the saved graph") from err


def _encode(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return {"n": value.name}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"f": repr(value)}
    if isinstance(value, list):
        return {"l": [_encode(v) for v in value]}
    if isinstance(value, tuple):
        return {"t": [_encode(v) for v in value]}
    if isinstance(value, dict):
        return {"d": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise TypeError(f"cannot save a graph argument of type {type(value).__name__}: {value!r}")


def _decode(value: Any, env: dict[str, fx.Node]) -> Any:
    if not isinstance(value, dict):
        return value
    (kind, v), = value.items()
    if kind == "n":
        return env[v]
    if kind == "f":
        return float(v)
    if kind == "l":
        return [_decode(x, env) for x in v]
    if kind == "t":
        return tuple(_decode(x, env) for x in v)
    if kind == "d":
        return {k: _decode(x, env) for k, x in v.items()}
    if kind in ("dtype", "layout", "memory_format"):
        obj = getattr(torch, v, None)
        if obj is None:
            raise FormatError(f"unknown {kind} {v!r} in the saved graph")
        return obj
    if kind == "device":
        return torch.device(v)
    raise FormatError(f"unknown value tag {kind!r} in the saved graph")


def graph_to_json(graph: fx.Graph) -> list:
    out = []
    for node in graph.nodes:
        entry: dict[str, Any] = {"op": node.op, "name": node.name}
        if node.op == "call_function":
            entry["target"] = _target_name(node.target)
        elif node.op != "placeholder" and node.op != "output":
            raise TypeError(f"cannot save graph node {node.name} of kind {node.op}")
        if node.op != "placeholder":
            entry["args"] = _encode(node.args)
            entry["kwargs"] = _encode(dict(node.kwargs))
        out.append(entry)
    return out


def graph_from_json(nodes: list) -> fx.Graph:
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for entry in nodes:
        op = entry["op"]
        if op == "placeholder":
            env[entry["name"]] = graph.placeholder(entry["name"])
        elif op == "call_function":
            node = graph.call_function(_resolve_target(entry["target"]), _decode(entry["args"], env),
                                       _decode(entry["kwargs"], env))
            node.name = entry["name"]
            env[entry["name"]] = node
        elif op == "output":
            graph.output(_decode(entry["args"], env)[0])
        else:
            raise FormatError(f"unknown graph node kind {op!r}")
    graph.lint()
    return graph


# -- partitions ----------------------------------------------------------------------------------

def _partition_state(p: Partition, prefix: str, tensors: dict[str, Tensor]) -> dict:
    info: dict[str, Any] = {"max_size": p.max_size, "quadrature": p.quadrature.name}
    if isinstance(p, TrainablePartition):
        info.update(type="trainable", eps=p.eps)
        tensors[prefix + "delta"] = p.delta.detach()
        tensors[prefix + "free"] = p._free.to(torch.uint8)
    elif isinstance(p, FixedPartition):
        info["type"] = "fixed"
        tensors[prefix + "points"] = p._points.detach()
    elif isinstance(p, UniformPartition):
        info.update(type="uniform", size=p.size)
    else:
        raise TypeError(f"cannot save a {type(p).__name__}")
    return info


def _partition_from(info: dict, prefix: str, tensors: dict[str, Tensor]) -> Partition:
    kind = info["type"]
    if kind == "uniform":
        if info["quadrature"] == "gauss-legendre":
            return GaussLegendrePartition(info["max_size"], info["size"])
        return UniformPartition(info["max_size"], info["quadrature"], info["size"])
    if kind == "fixed":
        return FixedPartition(tensors[prefix + "points"], info["quadrature"], info["max_size"])
    if kind == "trainable":
        delta = tensors[prefix + "delta"]
        free = tensors[prefix + "free"].bool()
        start = UniformPartition(info["max_size"], info["quadrature"], delta.numel() - 1)
        p = TrainablePartition(start, eps=info["eps"])
        if p.delta.shape != delta.shape or p._free.shape != free.shape:
            raise FormatError(f"partition tensors {prefix}* have inconsistent shapes")
        p.delta = nn.Parameter(delta.clone())
        with torch.no_grad():
            p._free.copy_(free)
        return p
    raise FormatError(f"unknown partition type {kind!r}")


# -- the model -----------------------------------------------------------------------------------

def _plan_json(plan: tuple) -> list:
    return [[[[a.size, a.group, a.integrate] for a in seg] for seg in dim] for dim in plan]


def _plan_from(data: list) -> tuple:
    return tuple(tuple(tuple(Atom(s, g, i) for s, g, i in seg) for seg in dim) for dim in data)


def save(imodel: IntegralModel, path: str | os.PathLike) -> None:
    """Write ``imodel`` to ``path`` (a single safetensors file)."""
    from .fileio import save_safetensors

    if not isinstance(imodel, IntegralModel):
        raise TypeError(f"save() needs an IntegralModel, got {type(imodel).__name__}")
    tensors: dict[str, Tensor] = {}
    functions = {}
    for name in imodel.tensor_names:
        key = _key(name)
        if key in imodel.functions:
            fn = imodel.functions[key]
            for i, block in enumerate(fn.blocks):
                tensors[f"f/{name}/{i}"] = block.values.detach()
            functions[name] = {"plan": _plan_json(fn.plan), "kind": fn.blocks[0].kind,
                               "shape": list(fn.shape), "dtype": str(fn.out_dtype).removeprefix("torch."),
                               "block_dims": [list(b.dims) for b in fn.blocks]}
        else:
            tensors[f"x/{name}"] = getattr(imodel.fixed, key).detach()
    partitions = {n: _partition_state(p, f"p/{n}/", tensors) for n, p in imodel.partition_map().items()}
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "torch": torch.__version__,
        "graph": graph_to_json(imodel.runtime.graph),
        "tensor_names": imodel.tensor_names, "trainable": sorted(imodel.trainable),
        "groups": [{"name": n, "members": imodel._members[n]} for n in imodel.group_names],
        "partitions": partitions, "functions": functions,
        "contractions": [{"plan": _plan_json((c.plan,))[0], "ndim": c.ndim, "dim": c.dim, "mean": c.mean}
                         for c in imodel.contractions],
        "in_spec": pytree.treespec_dumps(imodel.in_spec), "out_spec": pytree.treespec_dumps(imodel.out_spec),
        "training": imodel.training,
        "input_shapes": [list(s) if s is not None else None for s in imodel.input_shapes],
        "pinned": imodel.pinned,
    }
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_safetensors(tensors, path, metadata={"torchinn": json.dumps(meta)})


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> IntegralModel:
    """Read an :class:`IntegralModel` written by :func:`save`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise FormatError(f"{path} is not a torchinn model file (not a readable safetensors file: {err})") from err
    if "torchinn" not in header:
        raise FormatError(f"{path} is a safetensors file without torchinn metadata")
    try:
        meta = json.loads(header["torchinn"])
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: broken torchinn metadata ({err})") from err
    if meta.get("format") != FORMAT:
        raise FormatError(f"{path}: unknown format {meta.get('format')!r}")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatError(f"{path} was written with torchinn file format {version}; this torchinn reads "
                          f"formats up to {FORMAT_VERSION}: upgrade torchinn")
    try:
        return _build(meta, tensors)
    except (KeyError, TypeError, IndexError) as err:
        raise FormatError(f"{path}: broken or incomplete torchinn model ({type(err).__name__}: {err})") from err


def _build(meta: dict, tensors: dict[str, Tensor]) -> IntegralModel:
    graph = graph_from_json(meta["graph"])
    runtime = fx.GraphModule(nn.Module(), graph, class_name="IntegralRuntime")
    partitions = {n: _partition_from(info, f"p/{n}/", tensors) for n, info in meta["partitions"].items()}
    full_weights = {n: p.full_weights(dtype=torch.float64) for n, p in partitions.items()}
    functions = {}
    for name, info in meta["functions"].items():
        plan = _plan_from(info["plan"])
        dtype = getattr(torch, info.get("dtype", "float32"), None)
        if not isinstance(dtype, torch.dtype):
            raise FormatError(f"unknown dtype {info.get('dtype')!r} for tensor {name!r}")
        fn = StructuredFunction(torch.zeros(info["shape"], dtype=dtype), plan, full_weights, info["kind"])
        with torch.no_grad():
            for i, block in enumerate(fn.blocks):
                values = tensors[f"f/{name}/{i}"]
                if tuple(values.shape) != tuple(block.values.shape):
                    raise FormatError(f"tensor f/{name}/{i} has shape {tuple(values.shape)}, expected "
                                      f"{tuple(block.values.shape)}")
                block.values = nn.Parameter(values.clone(), requires_grad=block.values.requires_grad)
        if name not in meta["trainable"]:
            fn.requires_grad_(False)
        functions[name] = fn
    fixed = {name: tensors[f"x/{name}"] for name in meta["tensor_names"] if name not in functions}
    groups = [GroupInfo(g["name"], partitions[g["name"]].max_size, [tuple(m) for m in g["members"]])
              for g in meta["groups"]]
    contractions = [ContractionSpec(_plan_from([c["plan"]])[0], c["ndim"], c["dim"], c["mean"])
                    for c in meta["contractions"]]
    imodel = IntegralModel(runtime, meta["tensor_names"], functions, fixed, set(meta["trainable"]), groups,
                           partitions, contractions, pytree.treespec_loads(meta["in_spec"]),
                           pytree.treespec_loads(meta["out_spec"]))
    imodel.input_shapes = [tuple(s) if s is not None else None for s in meta.get("input_shapes", [])]
    imodel.pinned = dict(meta.get("pinned", {}))
    return imodel.train(meta.get("training", False))
