"""The input/output structure of a ``.inn`` file: a small strict schema parsed by torchinn.

A model's inputs and outputs are trees of tensors (``torch.utils._pytree`` specs). A file stores
them in the JSON text of torch's ``treespec_dumps`` (protocol 1), restricted to these nodes:

* a leaf (``"type": null``): a tensor or a Python value the graph takes or gives;
* ``builtins.tuple`` and ``builtins.list`` (context ``"null"``);
* ``builtins.dict`` whose context is a JSON list of distinct keys, strings (at most 200
  characters) or ints (within +-2**63);
* ``transformers.modeling_outputs.<Name>``, the output classes of Hugging Face models, with a
  list of field names: torchinn looks the class up in that one module (importing
  ``transformers`` if it is installed and not imported yet), checks it is a ``ModelOutput``
  dataclass and that the keys are its fields. The file only picks a class name inside that
  module; no other module is ever imported.

Nothing else is read: no module named in the file is imported, no enum or callable is built
(torch's own decoder imports the modules an enum context names, and builds a
``collections.defaultdict`` with a factory chosen by the file). Trees are bounded: at most
:data:`MAX_DEPTH` levels, :data:`MAX_NODES` nodes and :data:`MAX_TEXT` characters. Anything else
raises :class:`~torchinn.io.graph.FormatError`; :func:`spec_dumps` refuses (``TypeError``)
to write a spec this module could not read back.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import sys
from typing import Any

from torch.utils import _pytree as pytree

from .graph import FormatError

__all__ = ["spec_dumps", "spec_loads", "MAX_DEPTH", "MAX_NODES", "MAX_TEXT"]

MAX_DEPTH = 32
MAX_NODES = 10_000
MAX_TEXT = 1_000_000
_HF_MODULE = "transformers.modeling_outputs"
_CONTAINERS = {"builtins.tuple": tuple, "builtins.list": list, "builtins.dict": dict}
_ALLOWED = ("allowed: a leaf (type null), builtins.tuple, builtins.list, builtins.dict with str or int keys, "
            f"{_HF_MODULE}.<a ModelOutput class>")


def _model_output(cls: Any) -> bool:
    return isinstance(cls, type) and dataclasses.is_dataclass(cls) and any(
        c.__module__ == "transformers.utils.generic" and c.__name__ == "ModelOutput" for c in cls.__mro__)


def _type_name(spec: pytree.TreeSpec) -> str | None:
    if spec.is_leaf():
        return None
    for name, cls in _CONTAINERS.items():
        if spec.type is cls:
            return name
    if _model_output(spec.type) and spec.type.__module__ == _HF_MODULE:
        return f"{_HF_MODULE}.{spec.type.__name__}"
    raise TypeError(f"cannot save a model whose inputs or outputs hold a {spec.type.__module__}."
                    f"{spec.type.__qualname__}: a torchinn file stores tuples, lists, dicts with str or int "
                    f"keys, None, tensors and {_HF_MODULE} classes; return one of those")


def _node_json(spec: pytree.TreeSpec, depth: int) -> dict:
    if depth > MAX_DEPTH:
        raise TypeError(f"cannot save inputs or outputs nested more than {MAX_DEPTH} levels deep")
    name = _type_name(spec)
    if name is None:
        return {"type": None, "context": None, "children_spec": []}
    context = spec.context if name != "builtins.tuple" and name != "builtins.list" else None
    children = [_node_json(spec.child(i), depth + 1) for i in range(spec.num_children)]
    return {"type": name, "context": json.dumps(list(context) if context is not None else None),
            "children_spec": children}


def spec_dumps(spec: pytree.TreeSpec) -> str:
    """``spec`` as the text :func:`spec_loads` reads (the same text as torch's ``treespec_dumps``
    for these nodes); ``TypeError`` for a spec outside the schema."""
    text = json.dumps([1, _node_json(spec, 0)])
    spec_loads(text, "spec")  # a file that saves must load
    return text


def _hf_class(name: str, field: str) -> type:
    if not name.isidentifier():
        raise FormatError(f"{field}: {_HF_MODULE}.{name[:80]!r} is not a class name")
    module = sys.modules.get(_HF_MODULE)
    if module is None:
        if importlib.util.find_spec("transformers") is None:
            raise FormatError(f"{field}: the model returns a {_HF_MODULE}.{name} (a Hugging Face model): "
                              "install transformers to load it")
        module = importlib.import_module(_HF_MODULE)  # a fixed module, never one the file names
    cls = getattr(module, name, None)
    if not _model_output(cls) or cls not in pytree.SUPPORTED_NODES:
        raise FormatError(f"{field}: {_HF_MODULE} has no ModelOutput class {name!r}")
    return cls


def _keys(text: Any, field: str, n: int, ints: bool) -> list:
    try:
        keys = json.loads(text) if isinstance(text, str) and len(text) <= MAX_TEXT else None
    except (ValueError, RecursionError):
        keys = None
    if not isinstance(keys, list) or len(keys) != n:
        raise FormatError(f"{field}.context must be the JSON text of a list of {n} key(s), got {str(text)[:100]!r}")
    for k in keys:
        if isinstance(k, str):
            if len(k) > 200:
                raise FormatError(f"{field}: a key is longer than 200 characters")
        elif not ints or isinstance(k, bool) or not isinstance(k, int) or not -2**63 <= k < 2**63:
            raise FormatError(f"{field}: keys must be strings{' or ints within +-2**63' if ints else ''}, "
                              f"got {k!r}"[:300])
    if len({(type(k), k) for k in keys}) != len(keys):
        raise FormatError(f"{field}: a key appears twice")
    return keys


def _node(value: Any, field: str, depth: int, count: list[int]) -> pytree.TreeSpec:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise FormatError(f"{field}: more than {MAX_NODES} nodes")
    if depth > MAX_DEPTH:
        raise FormatError(f"{field} is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(value, dict) or set(value) != {"type", "context", "children_spec"}:
        raise FormatError(f"{field} must be an object with keys type, context, children_spec, got {value!r}"[:300])
    kind, context, children = value["type"], value["context"], value["children_spec"]
    if not isinstance(children, list):
        raise FormatError(f"{field}.children_spec must be a list, got {children!r}"[:300])
    if kind is None:
        if context is not None or children:
            raise FormatError(f"{field}: a leaf has context null and no children")
        return pytree.treespec_leaf()
    if not isinstance(kind, str):
        raise FormatError(f"{field}.type must be a string or null, got {kind!r}"[:300])
    subs = [_node(c, f"{field}.children_spec[{i}]", depth + 1, count) for i, c in enumerate(children)]
    if kind in ("builtins.tuple", "builtins.list"):
        if context != "null":
            raise FormatError(f"{field}: a {kind} has context \"null\", got {context!r}"[:300])
        return pytree.TreeSpec(_CONTAINERS[kind], None, subs)
    if kind == "builtins.dict":
        return pytree.TreeSpec(dict, _keys(context, field, len(subs), True), subs)
    module, _, name = kind.rpartition(".")
    if module == _HF_MODULE:
        cls = _hf_class(name, field)
        keys = _keys(context, field, len(subs), False)
        unknown = sorted(set(keys) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise FormatError(f"{field}: {kind} has no field(s) {unknown[:5]}")
        return pytree.TreeSpec(cls, keys, subs)
    raise FormatError(f"{field}: node type {kind[:100]!r} is not in a torchinn file's schema ({_ALLOWED}); "
                      "nothing is imported")


def spec_loads(text: Any, field: str) -> pytree.TreeSpec:
    """The tree spec in ``text`` (see the module doc); :class:`FormatError` naming ``field`` for
    anything outside the schema."""
    if not isinstance(text, str):
        raise FormatError(f"{field} must be a string, got {text!r}"[:300])
    if len(text) > MAX_TEXT:
        raise FormatError(f"{field} is longer than {MAX_TEXT} characters")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise FormatError(f"{field}: not a tree structure (not JSON: {err})"[:300]) from None
    if not isinstance(data, list) or len(data) != 2 or data[0] != 1 or isinstance(data[0], bool):
        raise FormatError(f"{field}: not a tree structure (expected [1, {{...}}], protocol 1), got {text[:100]!r}")
    return _node(data[1], field, 0, [0])
