"""What a converted network is called with, checked before anything runs on it.

An integral model was traced on one set of inputs: so many positional ones and these keyword
ones (``in_spec``), each tensor of a shape (some sizes free: ``input_shapes``) and dtype
(``input_dtypes``), Python values baked in (``input_guards``, :mod:`torchinn.graph.guards`).
:func:`input_problem` says in words what a call does differently (the keyword inputs the model
was not converted with, with close matches for typos; the missing ones; the input of the wrong
shape); :func:`check_batches` checks calibration batches with their dtypes before any of them
runs, naming the batch (``compress``, ``choose_sizes``, ``tune_grid``, ``recalibrate_bn``).

A batch is what a data loader yields: a tensor, an ``(inputs, labels)`` pair, or keyword inputs
as a Hugging Face collator gives them (a dict or a ``BatchEncoding`` of ``input_ids``,
``attention_mask``, ...; its ``labels`` are not an input). :func:`batch_inputs` reads the model's
inputs out of any of them as :class:`Inputs` (positional ones, and keyword ones in ``.kwargs``),
which :func:`run` calls a model with; :func:`padding_mask` is a batch's ``attention_mask``,
with which the distillation losses leave out padded positions.

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

__all__ = ["LABEL_KEYS", "Inputs", "as_inputs", "batch_inputs", "check_batches", "input_problem", "batch_size", "leading_samples",
           "padding_mask", "position_mask", "run", "traced_order"]

#: keys of a dict batch that are labels, not inputs (what Hugging Face collators and ``Trainer`` use)
LABEL_KEYS = ("labels", "label", "label_ids")


class Inputs(tuple):
    """The inputs of one call: a tuple of positional inputs with the keyword ones in ``kwargs``;
    :func:`run` calls ``model(*inputs, **inputs.kwargs)``.

    >>> x = Inputs((), {"input_ids": 1})
    >>> len(x), x.kwargs
    (0, {'input_ids': 1})
    """

    kwargs: dict[str, Any]

    def __new__(cls, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Inputs:
        self = super().__new__(cls, args)
        self.kwargs = dict(kwargs or {})
        return self

    def __bool__(self) -> bool:  # keyword inputs alone are inputs
        return bool(len(self) or self.kwargs)

    def __repr__(self) -> str:
        return f"Inputs({tuple(self)!r}, {self.kwargs!r})"

    def __reduce__(self) -> tuple:
        return (Inputs, (tuple(self), self.kwargs))


def as_inputs(example_inputs: Any, what: str = "example_inputs") -> Inputs:
    """:class:`Inputs` from what ``compress`` and ``choose_sizes`` take as the example: a tensor, a
    tuple (or list) of positional inputs, or a dict (``BatchEncoding`` too) of keyword inputs
    (``{"input_ids": ids, "attention_mask": mask}``), which is kept whole.

    >>> as_inputs({"input_ids": 1}).kwargs
    {'input_ids': 1}
    >>> as_inputs("ids")
    Traceback (most recent call last):
    ...
    TypeError: example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs ({'input_ids': ids, 'attention_mask': mask}), got str
    """
    if isinstance(example_inputs, Inputs):
        return example_inputs
    if isinstance(example_inputs, Tensor):
        return Inputs((example_inputs,))
    if isinstance(example_inputs, Mapping):
        bad = [k for k in example_inputs if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{what} as a dict holds keyword inputs, whose names must be str; got keys {bad!r}")
        return Inputs((), example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return Inputs(tuple(example_inputs))
    raise TypeError(f"{what} must be a tensor, a tuple of positional inputs or a dict of keyword inputs "
                    f"({{'input_ids': ids, 'attention_mask': mask}}), got {type(example_inputs).__name__}")


def run(model: Any, inputs: Sequence[Any]) -> Any:
    """``model(*inputs, **inputs.kwargs)`` for :class:`Inputs`, ``model(*inputs)`` for a tuple."""
    return model(*inputs, **getattr(inputs, "kwargs", {}))


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


def _keyword(batch: Mapping[Any, Any]) -> Inputs:
    bad = [k for k in batch if not isinstance(k, str)]
    if bad:
        raise TypeError(f"a dict batch holds keyword inputs, whose names must be str; got keys {bad!r}")
    return Inputs((), {k: v for k, v in batch.items() if k not in LABEL_KEYS})


def batch_inputs(batch: Any) -> Inputs:
    """The model inputs in a batch: a tensor; the first element of an ``(inputs, labels)`` pair
    (a tensor, a tuple of them, or a dict of keyword inputs); or a dict of keyword inputs (a
    ``BatchEncoding`` too) whose :data:`LABEL_KEYS` are left out.

    >>> import torch
    >>> batch_inputs({"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.zeros(2, 3)}).kwargs.keys()
    dict_keys(['input_ids'])
    """
    if isinstance(batch, Inputs):
        return batch
    if isinstance(batch, Tensor):
        return Inputs((batch,))
    if isinstance(batch, Mapping):
        return _keyword(batch)
    if isinstance(batch, (tuple, list)) and batch:
        first = batch[0]
        if isinstance(first, Inputs):
            return first
        if isinstance(first, Mapping):
            return _keyword(first)
        return Inputs(tuple(first)) if isinstance(first, (tuple, list)) else Inputs((first,))
    raise TypeError(f"cannot find the inputs in a batch of type {type(batch).__name__}: give a tensor, an "
                    "(inputs, labels) pair or a dict of keyword inputs")


def batch_size(inputs: Inputs) -> int:
    """The first dimension of the first tensor input with one (0 when there is none)."""
    tensors = [v for v in (*inputs, *inputs.kwargs.values()) if isinstance(v, Tensor) and v.ndim >= 1]
    return int(tensors[0].shape[0]) if tensors else 0


def leading_samples(inputs: Inputs, k: int) -> Inputs | None:
    """The first ``k`` samples of a batch: every tensor input whose first dimension is the batch
    size (that of the first tensor input) cut to ``k`` rows, the other inputs as they are; ``None``
    when the batch holds no tensor or has at most ``k`` samples.

    >>> import torch
    >>> x = Inputs((torch.zeros(4, 3),), {"attention_mask": torch.ones(4, 3), "scale": 2.0})
    >>> y = leading_samples(x, 2)
    >>> y[0].shape, y.kwargs["attention_mask"].shape, y.kwargs["scale"]
    (torch.Size([2, 3]), torch.Size([2, 3]), 2.0)
    """
    n = batch_size(inputs)
    if n <= k:
        return None
    cut = lambda v: v[:k] if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n else v
    return Inputs(tuple(cut(v) for v in inputs), {name: cut(v) for name, v in inputs.kwargs.items()})


def padding_mask(inputs: Any) -> Tensor | None:
    """The ``attention_mask`` keyword input of a batch (any form :func:`batch_inputs` reads) when it
    is a ``(batch, positions)`` tensor of 0 (padding) and 1; else ``None``."""
    try:
        mask = batch_inputs(inputs).kwargs.get("attention_mask")
    except TypeError:
        return None
    if not isinstance(mask, Tensor) or mask.ndim != 2:
        return None
    return mask


def position_mask(mask: Tensor | None, output: Tensor) -> Tensor | None:
    """``mask`` (``(batch, positions)``) shaped to multiply ``output`` when ``output`` has a vector
    per position (``(batch, positions, ...)``: per-token logits, hidden states); else ``None``
    (a pooled ``(batch, features)`` output is not masked, even where ``features`` is the length)."""
    if mask is None or output.ndim < 3 or tuple(output.shape[:2]) != tuple(mask.shape):
        return None
    return (mask != 0).to(output.dtype).reshape(*mask.shape, *([1] * (output.ndim - 2)))


def check_batches(imodel: IntegralModel, batches: Sequence[tuple], what: str = "calibration batch",
                  first: int = 0) -> None:
    """Raise ``ValueError`` naming the first of ``batches`` (:class:`Inputs` or tuples of positional
    inputs, numbered from ``first``) that ``imodel`` would refuse, whose dtypes differ from the
    converted ones, or that is empty (a tensor of 0 rows: a loss over no samples is not a number)."""
    for k, inputs in enumerate(batches, first):
        flat, problem = input_problem(imodel, tuple(inputs), getattr(inputs, "kwargs", {}), dtypes=True)
        empty = next((i for i, x in enumerate(flat) if isinstance(x, Tensor) and x.ndim and not x.shape[0]), None)
        if problem is None and empty is not None:
            problem = (f"input {empty} has shape {tuple(flat[empty].shape)}: an empty batch (0 rows); "
                       "drop it (a slice past the end of the data gives one)")
        mask = padding_mask(inputs)
        if problem is None and mask is not None and not bool((mask != 0).any()):
            problem = (f"its attention_mask of shape {tuple(mask.shape)} is all 0: every position is padding, so "
                       "there is nothing to compare; drop the batch")
        if problem is not None:
            raise ValueError(f"{what} {k}: {problem}")
