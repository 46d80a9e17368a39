"""Save an IntegralModel to one file and load it back without the original network.

The file is a ``safetensors`` file: every tensor (control values, trainable partitions, fixed
tensors) by name, and in its metadata a JSON description of the rest: the runtime graph (node by
node, with ops named like ``aten::conv2d.default``), the groups and their partitions, the
tensors' channel plans, the input/output structure, and a sha256 of all of it.

A file describes a model and never executes code: nothing is pickled, nothing named in it is
imported, the graph may only call the ATen operators torchinn's export emits (an allow-list,
:mod:`torchinn.io.ops`, extended in code with :func:`allow_ops`, never by a file) and the
few arithmetic functions torchinn's graphs use, and :func:`load` checks every field, the sizes
it declares against the tensors the file holds, and the sizes its graph would create, before it
builds anything (:mod:`torchinn.io.checks`). A malformed, damaged or crafted file raises
:class:`FormatError`; :func:`save` refuses a model whose file would not load. A model loaded
from a file still runs its graph's operators on your inputs, as any network does: it may
compute anything (wrong numbers included) and take time and memory that follow from the input
sizes (see :mod:`torchinn.io.ops` for what is and is not bounded).

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

import hashlib
import json
import math
import os
import stat
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from ..graph.groups import ContractionSpec, GroupInfo
from ..graph.guards import Guard
from ..model.groups import module_key
from ..elastic.network import DeployedSize, ElasticNetwork
from ..elastic.scaled import ScaledPartition
from ..model.integral_model import IntegralModel
from ..maths.partition import (
    FixedPartition,
    GaussLegendrePartition,
    Partition,
    UniformPartition,
)
from ..maths.trainable import TrainablePartition
from .checks import check_meta, check_tensors
from .elastic_biases import biases_from, biases_state
from .guards import check_guards
from .graph import FormatError, target_name
from .ops import allow_ops
from .spec import spec_dumps
from ..maths.structured import Atom, StructuredFunction

__all__ = ["save", "load", "allow_ops", "FORMAT_VERSION", "FormatError"]

FORMAT = "torchinn.IntegralModel"
FORMAT_VERSION = 1


# -- graph -> JSON (back: serialize_graph.graph_from_json) -----------------------------------------

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


def graph_to_json(graph: fx.Graph) -> list:
    out = []
    for node in graph.nodes:
        entry: dict[str, Any] = {"op": node.op, "name": node.name}
        if node.op == "call_function":
            entry["target"] = target_name(node.target)
        elif node.op != "placeholder" and node.op != "output":
            raise TypeError(f"cannot save graph node {node.name} of kind {node.op}")
        if node.op != "placeholder":
            entry["args"] = _encode(node.args)
            entry["kwargs"] = _encode(dict(node.kwargs))
        out.append(entry)
    return out


# -- partitions ----------------------------------------------------------------------------------

def _partition_state(p: Partition, prefix: str, tensors: dict[str, Tensor]) -> dict:
    info: dict[str, Any] = {"max_size": p.max_size, "quadrature": p.quadrature.name}
    if isinstance(p, TrainablePartition):
        info.update(type="trainable", eps=p.eps, mix=float(p.mix_raw.detach()), train_mix=p.mix_raw.requires_grad)
        tensors[prefix + "delta"] = p.delta.detach()
        tensors[prefix + "free"] = p._free.to(torch.uint8)
    elif isinstance(p, FixedPartition):
        info["type"] = "fixed"
        tensors[prefix + "points"] = p._points.detach()
    elif isinstance(p, UniformPartition):
        info.update(type="uniform", size=p.size)
    elif isinstance(p, ScaledPartition):
        raise TypeError("a deployed size's ScaledPartition is saved with its ElasticNetwork: save the network "
                        "(torchinn.save(elastic, path)), not its integral model alone")
    else:
        raise TypeError(f"cannot save a {type(p).__name__}")
    return info


def _deployed_state(i: int, target: float, d: DeployedSize, tensors: dict[str, Tensor]) -> dict:
    """The JSON of one deployed size (its tensors added to ``tensors`` under ``e/<i>/``)."""
    if d.kind in ("scales", "scales-bias", "scales-refit"):
        for g, p in d.partitions.items():
            tensors[f"e/{i}/{g}/log_scale"] = p.log_scale.detach()
        return {"target": target, "sizes": dict(d.sizes), "partitions": {}, "kind": d.kind,
                "scales": sorted(d.partitions), **biases_state(i, d, tensors)}
    return {"target": target, "sizes": dict(d.sizes),
            "partitions": {g: _partition_state(p, f"e/{i}/{g}/", tensors) for g, p in d.partitions.items()}}


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
        # the raw mix may sit outside [0, 1] while training (a straight-through clamp): set it after
        p = TrainablePartition(start, eps=info["eps"], train_mix=info.get("train_mix", False))
        with torch.no_grad():
            p.mix_raw.fill_(float(info.get("mix", 1.0)))
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


def checksum(meta: dict, tensors: dict[str, Tensor]) -> str:
    """sha256 of the metadata (canonical JSON, without its own ``sha256`` field) and of every
    tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    body = {k: v for k, v in meta.items() if k != "sha256"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(imodel: IntegralModel | ElasticNetwork, path: str | os.PathLike) -> None:
    """Write ``imodel`` to ``path`` (a single safetensors file, with a checksum of its contents).
    An :class:`~torchinn.elastic.ElasticNetwork` is saved with its rankings and curves (the
    ``elastic`` field), at its current sizes; :func:`load` gives it back."""
    from .fileio import save_safetensors

    elastic = None
    tensors: dict[str, Tensor] = {}
    if isinstance(imodel, ElasticNetwork):
        elastic = {"orders": {g: o.tolist() for g, o in imodel.orders.items()},
                   "curves": {g: [[float(r), float(e)] for r, e in c] for g, c in imodel.curves.items()},
                   "low": imodel.low}
        if imodel.deployed:
            elastic["active"] = imodel.active_deployed()
            elastic["deployed"] = [_deployed_state(i, t, d, tensors) for i, (t, d) in enumerate(sorted(imodel.deployed.items()))]
            tensors = {k: v.clone() for k, v in tensors.items()}  # the active ones are the model's too (p/...)
        imodel = imodel.imodel
    if not isinstance(imodel, IntegralModel):
        raise TypeError(f"save() needs an IntegralModel or an ElasticNetwork, got {type(imodel).__name__}")
    if elastic is None and len(imodel.offsets):
        raise TypeError("this integral model carries a deployed size's bias corrections (offsets): save its "
                        "ElasticNetwork (torchinn.save(elastic, path)), not the integral model alone")
    functions = {}
    for name in imodel.tensor_names:
        key = module_key(name)
        if key in imodel.functions:
            fn = imodel.functions[key]
            for i, block in enumerate(fn.blocks):
                tensors[f"f/{name}/{i}"] = block.values.detach()
            functions[name] = {"plan": _plan_json(fn.plan), "kind": fn.blocks[0].kind,
                               "shape": list(fn.shape), "dtype": str(fn.out_dtype).removeprefix("torch."),
                               "block_dims": [list(b.dims) for b in fn.blocks]}
        else:
            tensors[f"x/{name}"] = getattr(imodel.fixed, key).detach()
    # a deployed size's scales are in the elastic field: the model's own partitions are their points
    partitions = {n: _partition_state(p.base if elastic is not None and isinstance(p, ScaledPartition) else p,
                                      f"p/{n}/", tensors) for n, p in imodel.partition_map().items()}
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "torch": torch.__version__,
        "graph": graph_to_json(imodel.runtime.graph),
        "tensor_names": imodel.tensor_names, "trainable": sorted(imodel.trainable),
        "groups": [{"name": n, "members": imodel._members[n]} for n in imodel.group_names],
        "partitions": partitions, "functions": functions,
        "contractions": [{"plan": _plan_json((c.plan,))[0], "ndim": c.ndim, "dim": c.dim, "mean": c.mean}
                         for c in imodel.contractions],
        "in_spec": spec_dumps(imodel.in_spec), "out_spec": spec_dumps(imodel.out_spec),
        "training": imodel.training,
        "input_shapes": [list(s) if s is not None else None for s in imodel.input_shapes],
        "pinned": imodel.pinned,
        "batch_statistics": bool(imodel.batch_statistics),
        "input_names": list(imodel.input_names),
        "input_guards": [{"expr": _guard_json(g.expr), "text": g.text, "kind": g.kind}
                         for g in imodel.input_guards],
    }
    if elastic is not None:
        meta["elastic"] = elastic
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    on_meta = [k for k, v in tensors.items() if v.device.type == "meta"]
    if on_meta:
        raise ValueError(f"cannot save a model on the meta device (tensor {on_meta[0]!r} has no values); "
                         "load or compute real weights first")
    meta = json.loads(json.dumps(meta))  # tuples -> lists: the checksum hashes what load() reads
    try:
        check_tensors(tensors, imodel.trainable)
        check_meta(meta, tensors)
    except FormatError as err:  # the file would not load: say so now
        raise ValueError(f"cannot save this model: {err}") from None
    meta["sha256"] = checksum(meta, tensors)
    save_safetensors(tensors, path, metadata={"torchinn": json.dumps(meta)})


def load(path: str | os.PathLike, device: str | torch.device = "cpu", verify: bool = True
         ) -> IntegralModel | ElasticNetwork:
    """Read an :class:`IntegralModel` written by :func:`save`, on ``device`` (``"meta"`` works too);
    a file saved from an :class:`~torchinn.elastic.ElasticNetwork` gives one back, at the sizes
    it was saved at.

    Every field is checked before anything is built (``path`` must be a regular file, not a FIFO
    or a device), the graph may only call the allow-listed ATen operators (:func:`allow_ops`) and
    a few arithmetic functions, with bounded sizes, and the input/output structure is parsed by
    torchinn: a malformed or crafted file raises :class:`FormatError` naming the field. ``verify``: check the checksum of the metadata and tensors (files written by torchinn
    before it had one load without)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"load(): device must be a torch device like 'cpu', 'cuda:0' or 'meta', got {device!r}") from err
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):  # reading a FIFO blocks until a writer comes; a device never ends
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else \
            "a device or socket"
        raise FormatError(f"{path} is {kind}, not a regular file; a torchinn model is a .inn file")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise FormatError(f"{path} is not a torchinn model file (not a readable safetensors file: {err})") from err
    if "torchinn" not in header:
        raise FormatError(f"{path} is a safetensors file without torchinn metadata")
    try:
        meta = json.loads(header["torchinn"])
    except (ValueError, RecursionError) as err:
        raise FormatError(f"{path}: broken torchinn metadata ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FormatError(f"{path}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}"[:300])
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FormatError(f"{path}: version must be an int in [1, {FORMAT_VERSION}], got {version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(f"{path} was written with torchinn file format {version}; this torchinn reads "
                          f"formats up to {FORMAT_VERSION}: upgrade torchinn")
    try:
        if verify and "sha256" in meta and checksum(meta, tensors) != meta["sha256"]:
            raise FormatError("checksum mismatch: the metadata or tensors changed after the file was saved "
                              "(damaged or edited file)")
        in_spec, out_spec, graph = check_meta(meta, tensors)
        check_tensors(tensors, set(meta["trainable"]))
        imodel = _build(meta, tensors, in_spec, out_spec, graph)
        if "elastic" in meta:
            imodel = _elastic(imodel, meta["elastic"], tensors)
    except FormatError as err:  # values quoted from a crafted file can be long: keep the message short
        text = str(err)
        raise FormatError(f"{path}: {text if len(text) <= 600 else text[:600] + '...'}") from None
    except (KeyError, TypeError, IndexError, ValueError, RuntimeError, AttributeError, RecursionError,
            SyntaxError, OverflowError) as err:
        # the checks above should catch every malformed file; this is a last line of defence
        raise FormatError(f"{path}: broken or incomplete torchinn model ({type(err).__name__}: {err})") from err
    return imodel if device.type == "cpu" else imodel.to(device)


def _elastic(imodel: IntegralModel, info: dict, tensors: dict[str, Tensor]) -> ElasticNetwork:
    """The elastic network of a file (its field checked by :func:`~torchinn.io.checks.check_elastic`),
    at the sizes saved (with the partitions of its deployed size, if it was at one)."""
    sizes = imodel.sizes()
    training = imodel.training
    elastic = ElasticNetwork(imodel, info["orders"])
    elastic.curves = {g: [(float(r), float(e)) for r, e in c] for g, c in info["curves"].items()}
    elastic.low = None if info["low"] is None else float(info["low"])
    elastic.deployed = {}
    for i, d in enumerate(info.get("deployed", [])):
        own = {g: int(k) for g, k in d["sizes"].items()}
        if d.get("kind") in ("scales", "scales-bias", "scales-refit"):
            parts: dict[str, Partition] = {}
            for g in d["scales"]:
                parts[g] = ScaledPartition(elastic.partition(g, own[g]))
                parts[g].log_scale = nn.Parameter(tensors[f"e/{i}/{g}/log_scale"].clone())
            elastic.deployed[float(d["target"])] = DeployedSize(own, parts, d["kind"], biases_from(i, d, imodel, own, tensors))
        else:
            elastic.deployed[float(d["target"])] = DeployedSize(
                own, {g: _partition_from(p, f"e/{i}/{g}/", tensors) for g, p in d["partitions"].items()})
    if info.get("active") is not None:
        elastic.resize(target=float(info["active"]))
    else:
        elastic.set_sizes({n: sizes[n] for n in elastic.elastic_groups})
    return elastic.train(training)


def _guard_json(expr: Any) -> Any:
    """A guard expression (nested tuples) as JSON: lists, with non-finite floats tagged."""
    if isinstance(expr, tuple):
        return [_guard_json(e) for e in expr]
    if isinstance(expr, float) and not math.isfinite(expr):
        return {"f": repr(expr)}
    if expr is None or isinstance(expr, (bool, int, float, str)):
        return expr
    raise TypeError(f"cannot save a guard expression holding {type(expr).__name__}: {expr!r}")


def _build(meta: dict, tensors: dict[str, Tensor], in_spec: pytree.TreeSpec, out_spec: pytree.TreeSpec,
           graph: fx.Graph) -> IntegralModel:
    runtime = fx.GraphModule(nn.Module(), graph, class_name="IntegralRuntime")
    partitions = {}
    for n, info in meta["partitions"].items():
        try:
            partitions[n] = _partition_from(info, f"p/{n}/", tensors)
        except (ValueError, TypeError) as err:
            raise FormatError(f"partitions[{n!r}]: {err}") from None
    full_weights = {n: p.full_weights(dtype=torch.float64) for n, p in partitions.items()}
    functions = {}
    for name, info in meta["functions"].items():
        dtype = getattr(torch, info.get("dtype", "float32"))
        fn = StructuredFunction(torch.zeros(info["shape"], dtype=dtype), _plan_from(info["plan"]), full_weights,
                                info["kind"])
        with torch.no_grad():
            for i, block in enumerate(fn.blocks):
                values = tensors[f"f/{name}/{i}"]
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
                           partitions, contractions, in_spec, out_spec)
    imodel.input_shapes = [tuple(s) if s is not None else None for s in meta.get("input_shapes", [])]
    imodel.pinned = dict(meta.get("pinned", {}))
    imodel.batch_statistics = meta.get("batch_statistics", False)
    imodel.input_names = list(meta.get("input_names", []))
    guards = meta.get("input_guards", [])
    imodel.input_guards = [Guard(e, g["text"], g["kind"])
                           for e, g in zip(check_guards(guards, in_spec.num_leaves), guards)]
    return imodel.train(meta["training"])
