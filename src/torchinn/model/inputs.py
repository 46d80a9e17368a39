"""What a converted network is called with, checked before anything runs on it.

An integral model was traced on one set of inputs: so many positional ones and these keyword
ones (``in_spec``), each tensor of a shape (some sizes free: ``input_shapes``) and dtype
(``input_dtypes``), Python values baked in (``input_guards``, :mod:`torchinn.graph.guards`).
:func:`input_problem` says in words what a call does differently (the keyword inputs the model
was not converted with, with close matches for typos; the missing ones; the input of the wrong
shape); :func:`check_batches` checks calibration batches with their dtypes before any of them
runs, naming the batch (``compress``, ``choose_sizes``, ``tune_grid``, ``recalibrate_bn``).

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> imodel = inn.convert(net, (torch.randn(2, 4),))
>>> check_batches(imodel, [(torch.randn(3, 4),), (torch.randn(3, 5),)])
Traceback (most recent call last):
...
ValueError: calibration batch 1: input 0 has shape (3, 5), but the network was converted for inputs of shape (any, 4)
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from ..graph.guards import violation

if TYPE_CHECKING:
    from .integral_model import IntegralModel

__all__ = ["batch_inputs", "check_batches", "input_problem", "traced_order"]


def _traced_call(in_spec: pytree.TreeSpec) -> tuple[int, list[str]] | None:
    """(positional inputs, keyword names) of a spec of ``(args, kwargs)``; None for another."""
    if in_spec.type is not tuple or in_spec.num_children != 2:
        return None
    args, kwargs = in_spec.child(0), in_spec.child(1)
    if args.type is not tuple or kwargs.type is not dict:
        return None
    return args.num_children, list(kwargs.context)


def traced_order(kwargs: dict[str, Any], in_spec: pytree.TreeSpec) -> dict[str, Any]:
    """Keyword inputs in the order they were traced in (a dict's order is part of its spec)."""
    traced = _traced_call(in_spec)
    if not kwargs or traced is None or set(traced[1]) != set(kwargs):
        return kwargs
    return {k: kwargs[k] for k in traced[1]}


def _describe(spec: pytree.TreeSpec) -> str:
    """A spec in a few characters: ``*`` a leaf, ``(*, *)`` a tuple, ``{'mask': *}`` a dict."""
    if spec.is_leaf():
        return "*"
    items = [_describe(spec.child(i)) for i in range(spec.num_children)]
    if spec.type is dict:
        return "{" + ", ".join(f"{k!r}: {v}" for k, v in zip(spec.context, items)) + "}"
    if spec.type is list:
        return "[" + ", ".join(items) + "]"
    if spec.type is tuple:
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if spec.type is type(None):
        return "None"
    return f"{getattr(spec.type, '__name__', spec.type)}(" + ", ".join(items) + ")"


def _structure_problem(in_spec: pytree.TreeSpec, args: tuple, kwargs: Mapping[str, Any],
                       spec: pytree.TreeSpec) -> str:
    traced = _traced_call(in_spec)
    parts = []
    if traced is not None:
        n, names = traced
        unknown = [k for k in kwargs if k not in names]
        missing = [k for k in names if k not in kwargs]
        for k in unknown:
            near = difflib.get_close_matches(k, missing or names, n=3)
            parts.append(f"keyword input {k!r}, which it was not converted with"
                         + (f" (did you mean {near[0]!r}?)" if near else ""))
        if missing:
            parts.append(f"no keyword input(s) {missing}")
        if len(args) != n:
            parts.append(f"{len(args)} positional input(s)")
        if parts:
            return (f"the network was called with {'; '.join(parts)}, but it was converted with {n} "
                    f"positional input(s) and the keyword input(s) {names}: call it with those (or "
                    "convert again with the inputs you need)")
    return (f"the network was called with inputs structured as {_describe(spec)}, but it was converted "
            f"with inputs structured as {_describe(in_spec)} (* is a tensor or a Python value)")


def _shape_problem(flat: Sequence[Any], shapes: Sequence[tuple | None]) -> str | None:
    for i, (x, shape) in enumerate(zip(flat, shapes)):
        if shape is None or not isinstance(x, Tensor):
            continue
        if x.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape)):
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
            return (f"input {i} has shape {tuple(x.shape)}, but the network was converted for inputs "
                    f"of shape {want}")
    return None


def _dtype_problem(flat: Sequence[Any], dtypes: Sequence[torch.dtype | None], like: torch.dtype | None
                   ) -> str | None:
    """A floating input must have the dtype converted with or the network's current floating
    dtype (after ``.double()``); an integer or bool input must not be floating, nor the reverse."""
    for i, (x, want) in enumerate(zip(flat, dtypes)):
        if want is None or not isinstance(x, Tensor):
            continue
        if want.is_floating_point:
            ok = x.dtype in (want, like)
            expected = f"{want}" + (f" or {like}" if like not in (None, want) else "")
        else:
            ok = not x.is_floating_point() and not x.is_complex()
            expected = f"an integer or bool dtype ({want} when converted)"
        if not ok:
            return f"input {i} has dtype {x.dtype}, but the network was converted for {expected}"
    return None


def input_problem(imodel: IntegralModel, args: tuple, kwargs: Mapping[str, Any], dtypes: bool = False
                  ) -> tuple[list[Any], str | None]:
    """The flattened inputs of ``imodel(*args, **kwargs)`` and what is wrong with them (or None):
    their structure, shapes, (with ``dtypes``) dtypes and Python values (in that order)."""
    kwargs = dict(kwargs)
    flat, spec = pytree.tree_flatten((tuple(args), traced_order(kwargs, imodel.in_spec)))
    if spec != imodel.in_spec:
        return flat, _structure_problem(imodel.in_spec, tuple(args), kwargs, spec)
    problem = _shape_problem(flat, imodel.input_shapes)
    if problem is None and dtypes:
        tensors = chain(imodel.functions.parameters(), imodel.fixed.parameters(), imodel.fixed.buffers())
        like = next((t.dtype for t in tensors if t.is_floating_point()), None)
        problem = _dtype_problem(flat, imodel.input_dtypes, like)
    guards = imodel.input_guards
    if problem is None and guards:
        names = imodel.input_names or [f"input{i}" for i in range(len(flat))]
        problem = violation(guards, flat, names)
    return flat, problem


def batch_inputs(batch: Any) -> tuple:
    """The model inputs in a batch: a tensor, or the first element of a ``(inputs, labels)`` pair."""
    if isinstance(batch, Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch:
        first = batch[0]
        return tuple(first) if isinstance(first, (tuple, list)) else (first,)
    if isinstance(batch, dict):
        raise TypeError("dict batches need a loss_fn and an inputs function; pass (inputs, labels) pairs")
    raise TypeError(f"cannot find the inputs in a batch of type {type(batch).__name__}")


def check_batches(imodel: IntegralModel, batches: Sequence[tuple], what: str = "calibration batch",
                  first: int = 0) -> None:
    """Raise ``ValueError`` naming the first of ``batches`` (tuples of positional inputs, numbered
    from ``first``) that ``imodel`` would refuse, whose dtypes differ from the converted ones, or
    that is empty (a tensor of 0 rows: a loss over no samples is not a number)."""
    for k, inputs in enumerate(batches, first):
        flat, problem = input_problem(imodel, tuple(inputs), {}, dtypes=True)
        empty = next((i for i, x in enumerate(flat) if isinstance(x, Tensor) and x.ndim and not x.shape[0]), None)
        if problem is None and empty is not None:
            problem = (f"input {empty} has shape {tuple(flat[empty].shape)}: an empty batch (0 rows); "
                       "drop it (a slice past the end of the data gives one)")
        if problem is not None:
            raise ValueError(f"{what} {k}: {problem}")
