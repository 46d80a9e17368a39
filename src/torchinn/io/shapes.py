"""The shapes file of a Hugging Face folder written by :func:`torchinn.io.pretrained.save_pretrained`.

A resized model whose layers differ from each other (or that has fewer heads than a config
deriving the head size from hidden / heads can say) is not what its ``config`` builds. The
shapes file (``torchinn_shapes.json``) names every module whose tensors differ from the ones the
config builds, with its type and its size arguments, and every integer attribute a forward reads
that differs (GPT-2's ``split_size``, ``num_heads``, BERT's ``num_attention_heads``,
``all_head_size``, ...: the size attributes :mod:`torchinn.discrete.attributes` updates, plus
``num_key_value_groups``)::

    {"format": "torchinn-shapes", "version": 1, "architecture": "LlamaForCausalLM",
     "modules": {"model.layers.0.mlp.up_proj": {"type": "torch.nn.Linear",
                 "args": {"in_features": 32, "out_features": 40, "bias": false}}, ...},
     "attributes": {"transformer.h.0.attn": {"split_size": 16, "num_heads": 2}}}

Module types with size arguments: ``torch.nn.Linear`` (in/out features, bias), ``torch.nn.Embedding``
(num_embeddings, embedding_dim), ``torch.nn.LayerNorm`` (normalized_shape) and transformers'
``Conv1D`` (nf, nx); a module of another type (a model's own RMSNorm) lists the shapes of its own
``tensors``. Reading a file (:func:`apply_shapes`) checks every entry before anything is built: the
module must exist in the model the config builds and have the recorded type, every size is an int
in ``[1, 2**31)``, every attribute is on the allow-list (:data:`ATTRIBUTES`) and replaces an
existing int attribute; replacements are built on the meta device (the loaded tensors are assigned
to them), so no recorded size allocates memory.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..discrete.attributes import SIZE_ATTRS, SPLIT_ATTRS
from .ops import FormatError

__all__ = ["ATTRIBUTES", "FORMAT", "SHAPES_FILE", "VERSION", "apply_shapes", "describe"]

SHAPES_FILE = "torchinn_shapes.json"
FORMAT = "torchinn-shapes"
VERSION = 1
#: the integer attributes a shapes file may set: the size attributes torchinn updates when it
#: rebuilds a module, GPT-2's split size, and the query heads per key/value head of GQA attention
ATTRIBUTES = frozenset(SIZE_ATTRS | SPLIT_ATTRS | {"num_key_value_groups"})
MAX_SIZE = 2**31

_CONV1D = "transformers.pytorch_utils.Conv1D"
#: type -> its size arguments (and their kinds: "int", "bool", "ints")
ARGS: dict[str, dict[str, str]] = {
    "torch.nn.modules.linear.Linear": {"in_features": "int", "out_features": "int", "bias": "bool"},
    "torch.nn.modules.sparse.Embedding": {"num_embeddings": "int", "embedding_dim": "int"},
    "torch.nn.modules.normalization.LayerNorm": {"normalized_shape": "ints"},
    _CONV1D: {"nf": "int", "nx": "int"},
}


def type_name(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def _args(m: nn.Module) -> dict[str, Any]:
    t = type_name(m)
    if t.endswith(".Linear"):
        return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if t.endswith(".Embedding"):
        return {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim}
    if t.endswith(".LayerNorm"):
        return {"normalized_shape": list(m.normalized_shape)}
    return {"nf": m.nf, "nx": m.weight.shape[0]}


def _own(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
            if t is not None}


def describe(model: nn.Module, fresh: nn.Module) -> dict[str, Any]:
    """The shapes file of ``model``: where it differs from ``fresh`` (its class built from its
    config, e.g. on the meta device). Raises ``ValueError`` when the two have different modules or
    a module of another type than the config builds."""
    mine, theirs = dict(model.named_modules()), dict(fresh.named_modules())
    if mine.keys() != theirs.keys():
        extra, gone = sorted(mine.keys() - theirs.keys()), sorted(theirs.keys() - mine.keys())
        raise ValueError(f"{type(model).__name__} does not have the modules its config builds (not in the config's "
                         f"model: {extra[:5]}; missing: {gone[:5]}); torchinn.io.save_pretrained saves models whose "
                         "layers differ from the config only in their sizes")
    modules: dict[str, Any] = {}
    attributes: dict[str, dict[str, int]] = {}
    for name, m in mine.items():
        f = theirs[name]
        if type(m) is not type(f):
            raise ValueError(f"module {name!r} is a {type_name(m)}, but the config builds a {type_name(f)}")
        if _own(m) != _own(f):
            t = type_name(m)
            if t in ARGS:
                modules[name] = {"type": t, "args": _args(m)}
            else:
                modules[name] = {"type": t, "tensors": {n: list(s) for n, s in _own(m).items()}}
        attrs = {a: v for a, v in vars(m).items() if a in ATTRIBUTES and type(v) is int and vars(f).get(a) != v}
        if attrs and not (name in modules and "args" in modules[name]):
            attributes[name] = dict(sorted(attrs.items()))
    return {"format": FORMAT, "version": VERSION, "architecture": type(model).__name__,
            "modules": modules, "attributes": attributes}


def _size(where: str, value: Any, kind: str) -> Any:
    if kind == "bool":
        if type(value) is not bool:
            raise FormatError(f"{where} must be true or false, got {value!r}")
        return value
    if kind == "ints":
        if not isinstance(value, list) or not value:
            raise FormatError(f"{where} must be a non-empty list of ints in [1, {MAX_SIZE}), got {value!r}")
        return [_size(f"{where}[{i}]", v, "int") for i, v in enumerate(value)]
    if type(value) is not int or not 1 <= value < MAX_SIZE:
        raise FormatError(f"{where} must be an int in [1, {MAX_SIZE}), got {value!r}")
    return value


def _keys(where: str, value: Any, allowed: set[str], what: str = "keys") -> dict:
    if not isinstance(value, dict):
        raise FormatError(f"{where} must be a JSON object, got {type(value).__name__}")
    bad = sorted(str(k) for k in value if k not in allowed)
    if bad:
        some = sorted(allowed)
        raise FormatError(f"{where}: {bad[:5]} not among the {what} allowed here "
                          f"({some[:8]}{' ...' if len(some) > 8 else ''})")
    return value


def _build(t: str, args: dict[str, Any], old: nn.Module) -> nn.Module:
    """A module of type ``t`` at ``args`` on the meta device, with ``old``'s other settings."""
    with torch.device("meta"):
        dtype = next((p.dtype for p in old.parameters(recurse=False)), None)
        if t.endswith(".Linear"):
            new: nn.Module = nn.Linear(args["in_features"], args["out_features"], bias=args["bias"], dtype=dtype)
        elif t.endswith(".Embedding"):
            new = copy.copy(old)
            new.num_embeddings, new.embedding_dim = args["num_embeddings"], args["embedding_dim"]
            new.weight = nn.Parameter(torch.empty(args["num_embeddings"], args["embedding_dim"], dtype=dtype))
        elif t.endswith(".LayerNorm"):
            new = nn.LayerNorm(args["normalized_shape"], eps=old.eps, elementwise_affine=old.elementwise_affine,
                               bias=getattr(old, "bias", None) is not None, dtype=dtype)
        else:
            new = type(old)(args["nf"], args["nx"])
            new.to(dtype=dtype)
    return new


def apply_shapes(model: nn.Module, shapes: Any, where: str) -> None:
    """Resize ``model`` (built from its config) in place as the shapes file ``shapes`` says;
    ``where`` names the file in errors. Every entry is checked first (:class:`FormatError`)."""
    shapes = _keys(where, shapes, {"format", "version", "architecture", "modules", "attributes"})
    if shapes.get("format") != FORMAT or shapes.get("version") != VERSION:
        raise FormatError(f"{where}: format {shapes.get('format')!r} version {shapes.get('version')!r}; this "
                          f"torchinn reads format {FORMAT!r} version {VERSION}")
    if shapes.get("architecture") != type(model).__name__:
        raise FormatError(f"{where}: architecture {shapes.get('architecture')!r}, but config.json builds a "
                          f"{type(model).__name__}")
    named = dict(model.named_modules())
    plan: list[tuple[str, Any]] = []
    for name, entry in _keys(f"{where}: modules", shapes.get("modules", {}), set(named),
                             "modules of the model config.json builds").items():
        at = f"{where}: modules[{name!r}]"
        entry = _keys(at, entry, {"type", "args", "tensors"})
        old = named[name]
        if entry.get("type") != type_name(old):
            raise FormatError(f"{at}.type is {entry.get('type')!r}, but the config builds a {type_name(old)} there")
        if entry["type"] in ARGS:
            kinds = ARGS[entry["type"]]
            args = _keys(f"{at}.args", entry.get("args"), set(kinds))
            if set(args) != set(kinds):
                raise FormatError(f"{at}.args must give {sorted(kinds)}, got {sorted(args)}")
            plan.append((name, _build(entry["type"], {k: _size(f"{at}.args.{k}", v, kinds[k]) for k, v in args.items()},
                                      old)))
        else:
            own = _own(old)
            tensors = _keys(f"{at}.tensors", entry.get("tensors"), set(own))
            plan.append((name, {n: _size(f"{at}.tensors[{n!r}]", s, "ints") for n, s in tensors.items()}))
    values: list[tuple[nn.Module, str, int]] = []
    for name, attrs in _keys(f"{where}: attributes", shapes.get("attributes", {}), set(named),
                             "modules of the model config.json builds").items():
        at = f"{where}: attributes[{name!r}]"
        for attr, value in _keys(at, attrs, set(attrs) if isinstance(attrs, dict) else set()).items():
            if attr not in ATTRIBUTES or type(vars(named[name]).get(attr)) is not int:
                raise FormatError(f"{at}: {attr!r} is not an attribute a shapes file may set (allowed: the integer "
                                  f"attributes {sorted(ATTRIBUTES)})")
            values.append((named[name], attr, _size(f"{at}.{attr}", value, "int")))
    for name, new in plan:
        if isinstance(new, nn.Module):
            model.set_submodule(name, new)
        else:
            m = named[name]
            for n, shape in new.items():
                old_t = getattr(m, n)
                empty = torch.empty(shape, dtype=old_t.dtype, device="meta")
                setattr(m, n, nn.Parameter(empty, requires_grad=old_t.requires_grad)
                        if isinstance(old_t, nn.Parameter) else empty)
    for m, attr, value in values:
        setattr(m, attr, value)
