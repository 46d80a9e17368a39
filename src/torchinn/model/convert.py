"""Convert a trained network into an integral one (the paper's Algorithm 1), exact at full size.

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
...                           torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3), torch.nn.Flatten(),
...                           torch.nn.Linear(8 * 6 * 6, 10)).eval()
>>> x = torch.randn(2, 3, 8, 8)
>>> imodel = inn.convert(net, (x,))
>>> bool(torch.allclose(imodel(x), net(x), atol=1e-5))
True
>>> sorted(imodel.sizes().values())
[8, 16]
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int
from tqdm.auto import tqdm

from ..maths.functions import KINDS, Kind
from ..graph.analysis import analyse, hint
from ..graph.build import build_runtime
from ..graph.fuse import fuse_batch_norms
from ..graph.groups import Plan, finalize
from ..graph.guards import Guard
from ..graph.trace import Traced, trace
from .integral_model import IntegralModel
from ..options import check_choice, check_module_names, check_number
from ..maths.partition import UniformPartition
from ..maths.quadrature import QUADRATURES
from ..discrete.rebuild import make_original
from ..maths.structured import DimPlan, StructuredFunction
from .exactness import check_exact, same_at_batch_one
from .inputs import Inputs
from .memory import release_memory, weight_bytes
from .tsp import check_solver

__all__ = ["ConvertConfig", "convert", "UnsupportedOpError"]

log = logging.getLogger(__name__)


class UnsupportedOpError(ValueError):
    """The network uses an operation on channels that torchinn cannot follow."""


@dataclass
class ConvertConfig:
    """How :func:`convert` works.

    Args:
        quadrature: rule for every group (``"trapezoid"``, ``"simpson"``, ``"midpoint"``,
            ``"left"``, ``"right"``, ``"gauss-legendre"``).
        kind: interpolation of the continuous functions, ``"cubic"`` (the paper) or ``"linear"``.
        permute: reorder each group's channels to minimise total variation (TSP), so the weights
            are smooth along channels; the network computes exactly the same function.
        tsp_time_limit: cap on the seconds of TSP search per group (``None``: scaled with size).
        tsp_solver: ``"local"`` (2-opt/Or-opt, reproducible from ``seed``), ``"fast_tsp"``
            (slightly shorter paths, not reproducible: the package has no seed), or a solver
            added with :func:`torchinn.model.tsp.register_solver`.
        seed: seed of the TSP search.
        fuse_batch_norm: fold batch norms into the conv/linear before them (exact in eval mode).
        keep_discrete: names of modules, parameters or buffers (or tensor attributes) of the
            model whose channels must not change (a module's name covers its tensors); a name
            the model does not have is a ``ValueError`` from :func:`convert`.
        unsupported: ``"error"`` (default) raises on an op on channels torchinn cannot follow;
            ``"keep"`` keeps the channels it touches at full size and logs a warning.
        hidden: resize the hidden size of a transformer (the width of its residual stream: the
            output of ``model.get_input_embeddings()``). ``None``: kept at full size for Hugging
            Face models (a ``PreTrainedModel``), whose attention heads and MLP widths are the
            groups; resized like any other group for every other model.
        check: compare the integral model with the network on the example inputs (exact at full
            size) and run it once at smaller sizes.
        progress: show a progress bar while permuting (``None``: only for big networks).
    """

    quadrature: str = "trapezoid"
    kind: Kind = "cubic"
    permute: bool = True
    tsp_time_limit: float | None = None
    tsp_solver: str = "local"
    seed: int = 0
    fuse_batch_norm: bool = True
    keep_discrete: Sequence[str] = field(default_factory=tuple)
    unsupported: Literal["error", "keep"] = "error"
    hidden: bool | None = None
    check: bool = True
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_choice(self.quadrature, sorted(QUADRATURES), "quadrature")
        check_choice(self.kind, KINDS, "kind")
        check_choice(self.unsupported, ("error", "keep"), "unsupported")
        check_solver(self.tsp_solver, "tsp_solver")
        if self.tsp_time_limit is not None:
            check_number(self.tsp_time_limit, "tsp_time_limit", 0, low_open=True)
        if isinstance(self.keep_discrete, str):
            self.keep_discrete = (self.keep_discrete,)
        self.keep_discrete = tuple(self.keep_discrete)
        if self.hidden not in (None, True, False):
            raise TypeError(f"hidden must be None, True or False, got {self.hidden!r}")
        if not all(isinstance(k, str) for k in self.keep_discrete):
            raise TypeError(f"keep_discrete must be names (str), got {self.keep_discrete!r}")


def _check_model(model: nn.Module, example_inputs: tuple) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() needs an nn.Module, got {type(model).__name__}")
    if isinstance(model, IntegralModel):
        raise TypeError("this model is already an IntegralModel")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.device.type == "meta":
            raise ValueError(f"tensor {name!r} is on the meta device: load real weights before converting")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"tensor {name!r} has {bad} NaN/Inf values; torchinn needs finite weights")
    for name, mod in model.named_modules():
        var = getattr(mod, "running_var", None) if isinstance(mod, nn.modules.batchnorm._NormBase) else None
        if isinstance(var, Tensor) and var.is_floating_point() and bool((var < 0).any()):
            k = int((var < 0).sum())
            raise ValueError(f"batch norm {name!r} has {k} negative running_var value(s) (min "
                             f"{float(var.min()):.3g}); a variance must be >= 0, so its statistics "
                             "are corrupt: recompute them (run the model in train mode on data) or "
                             "load the right checkpoint")
    if not any(True for _ in model.parameters()):
        raise ValueError(f"{type(model).__name__} has no parameters: nothing to convert")


def _members(tensors: dict[str, Tensor], plans: dict[str, tuple[DimPlan, ...]], group: str
             ) -> list[tuple[str, int, int, int, list[int]]]:
    """Where a group's channels are: (tensor, dim, segment start, segment length, atom sizes, atom index)."""
    out = []
    for name, plan in plans.items():
        for d, dim_plan in enumerate(plan):
            start = 0
            for seg in dim_plan:
                length = math.prod(a.size for a in seg)
                for k, a in enumerate(seg):
                    if a.group == group:
                        out.append((name, d, start, length, [x.size for x in seg], k))
                start += length
    return out


def _view(t: Tensor, d: int, start: int, length: int, sizes: list[int], k: int) -> Tensor:
    """The slice of ``t`` for one segment, with the group's atom moved to dim 0."""
    block = t.narrow(d, start, length)
    block = block.reshape(list(t.shape[:d]) + sizes + list(t.shape[d + 1:]))
    return block.movedim(d + k, 0)


def _permute_(t: Tensor, d: int, start: int, length: int, sizes: list[int], k: int, perm: Tensor) -> Tensor:
    """``t`` with one segment's atom ``k`` reordered by ``perm``: in place (one segment's worth of
    new memory, not a copy of the tensor), or a copy where ``t`` is not contiguous."""
    if not t.is_contiguous():
        t = t.clone(memory_format=torch.contiguous_format)
    block = t.narrow(d, start, length)
    shaped = block.view(list(t.shape[:d]) + sizes + list(t.shape[d + 1:]))
    block.copy_(shaped.index_select(d + k, perm).view(block.shape))
    return t


def _permute_groups(tensors: dict[str, Tensor], plan: Plan, config: ConvertConfig) -> dict[str, float]:
    from .permute import order_channels, total_variation

    stats = {"tv_before": 0.0, "tv_after": 0.0}
    show = config.progress if config.progress is not None else len(plan.groups) > 30
    for g in tqdm(plan.groups, desc="permuting channels", disable=not show, leave=False):
        where = _members(tensors, plan.tensors, g.name)
        members = [(_view(tensors[n], d, s, ln, sz, k), 0) for n, d, s, ln, sz, k in where]
        before = total_variation(members)
        perm = order_channels(members, seed=config.seed, time_limit=config.tsp_time_limit,
                              solver=config.tsp_solver)
        del members
        for n, d, s, ln, sz, k in where:  # the traced tensors are convert's own (graph.trace)
            tensors[n] = _permute_(tensors[n], d, s, ln, sz, k, perm)
        after = total_variation([(_view(tensors[n], d, s, ln, sz, k), 0) for n, d, s, ln, sz, k in where])
        stats["tv_before"] += before
        stats["tv_after"] += after
    return stats


def _check_dtypes(tensors: dict[str, Tensor], plan: Plan) -> None:
    """Only floating tensors can be continuous: a bool mask or an index table along channels
    is refused before anything else runs on it (with how to keep it discrete)."""
    for name, dim_plans in plan.tensors.items():
        if tensors[name].is_floating_point():
            continue
        groups = sorted({a.group for dp in dim_plans for seg in dp for a in seg if a.group is not None})
        raise TypeError(f"tensor {name!r} of dtype {tensors[name].dtype} is used along the channels of "
                        f"group(s) {groups}; only floating tensors can be continuous. Keep those "
                        f"channels at full size with ConvertConfig(keep_discrete=[{name!r}]) or use "
                        "a floating mask")


def _kept(model: nn.Module, config: ConvertConfig) -> dict[str, str]:
    """Names kept at full size, with why: the caller's, and a Hugging Face model's input
    embedding (which pins the hidden size) unless ``config.hidden``."""
    keep = {k: "'{}' kept discrete by the caller" for k in config.keep_discrete}
    hf = any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__)
    get = getattr(model, "get_input_embeddings", None)
    if not (config.hidden is False or config.hidden is None and hf) or not callable(get):
        return keep
    try:
        embedding = get()
    except (NotImplementedError, AttributeError):
        return keep
    if not isinstance(embedding, nn.Module):
        return keep
    own = {id(p) for p in embedding.parameters()}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in own:  # every name of a tied weight (GPT-2's wte is lm_head's)
            keep.setdefault(name, "'{}' is the input embedding of a Hugging Face model, kept at full "
                                  "size with the hidden size it sets; ConvertConfig(hidden=True) resizes "
                                  "the hidden size")
    return keep


def _problems(an, config: ConvertConfig) -> None:
    if not an.problems:
        return
    lines = "\n".join(f"  - {p}" for p in an.problems)
    if config.unsupported == "error":
        raise UnsupportedOpError(
            f"torchinn cannot follow channels through {len(an.problems)} operation(s):\n{lines}\n"
            "Keep the channels around them discrete with ConvertConfig(keep_discrete=[<module names>]) "
            "or ConvertConfig(unsupported='keep'), or register a handler with "
            "torchinn.register_op.")
    log.warning("keeping channels at full size around unsupported operations:\n%s", lines)


def _inputs(example_inputs: object, kwargs: Mapping[str, object] | None) -> tuple[tuple, dict]:
    """``(args, kwargs)`` from what :func:`convert` accepts: a tensor, a tuple, or a mapping of
    keyword inputs (``{"input_ids": ids}``), plus optional ``kwargs``."""
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, Inputs) and example_inputs.kwargs:  # what compress passes on
        if kwargs:
            raise TypeError("pass keyword inputs either in example_inputs or as kwargs, not both")
        example_inputs, kwargs = tuple(example_inputs), example_inputs.kwargs
    if isinstance(example_inputs, Mapping):
        if kwargs:
            raise TypeError("pass keyword inputs either as example_inputs (a dict) or as kwargs, "
                            f"not both (got keys {sorted(example_inputs)} and {sorted(kwargs)})")
        example_inputs, kwargs = (), example_inputs
    example_inputs = tuple(example_inputs) if isinstance(example_inputs, tuple) else example_inputs
    if not isinstance(example_inputs, tuple):
        raise TypeError(f"example_inputs must be a tuple of inputs, a tensor or a dict of keyword "
                        f"inputs, got {type(example_inputs).__name__}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs must be a dict of keyword inputs, got {type(kwargs).__name__}")
    bad = [k for k in (kwargs or {}) if not isinstance(k, str)]
    if bad:
        raise TypeError(f"keyword input names must be str, got {bad!r}")
    return example_inputs, dict(kwargs or {})


def convert(model: nn.Module, example_inputs: tuple | Tensor | Mapping[str, object] = (),
            config: ConvertConfig | None = None, *,
            kwargs: Mapping[str, object] | None = None) -> IntegralModel:
    """Turn ``model`` into an :class:`IntegralModel` that reproduces it at full size.

    ``model`` is traced with ``torch.export`` on ``model(*example_inputs, **kwargs)`` (a copy, in
    eval mode; the model itself is not modified), its batch norms are folded, its channel groups
    are found, each group's channels are reordered to make the weights smooth, and every grouped
    tensor becomes a continuous function of its groups. Network inputs and outputs stay discrete.
    Keyword inputs go in ``kwargs`` or as a dict in place of ``example_inputs``
    (``convert(llm, {"input_ids": ids, "attention_mask": mask})``); the integral model is then
    called the same way. A key/value cache is switched off while tracing (the outputs carry
    none; see :mod:`torchinn.graph.adapters`). The model only ever runs on copies of the example
    inputs; a ``forward`` that writes to an input in place converts, and the integral model writes
    to a copy of that input (it returns what the ``forward`` returns, without the side effect).
    """
    config = config or ConvertConfig()
    example_inputs, kwargs = _inputs(example_inputs, kwargs)
    _check_model(model, example_inputs)
    if model.training and any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout))
                              for m in model.modules()):
        warnings.warn(f"{type(model).__name__} is in training mode; it is converted as in eval mode "
                      "(batch norms use their running statistics, dropout is off)", stacklevel=2)
    report: dict[str, float] = {}
    t0 = time.perf_counter()
    traced: Traced = trace(model, example_inputs, kwargs)
    # torch.export leaves reference cycles that hold a copy of the weights until the next
    # collection: collected now, before the permutation and the functions add theirs (a 0.18 B Llama's
    # convert peaked at 3.7x the model without this, 3.05x with it: benchmarks/RESULTS.md)
    nbytes = weight_bytes(model)
    release_memory(nbytes)
    report["trace_s"] = time.perf_counter() - t0
    check_module_names(model, config.keep_discrete, "ConvertConfig.keep_discrete", traced.source.values())
    t0 = time.perf_counter()
    folded = fuse_batch_norms(traced) if config.fuse_batch_norm else []
    report["fuse_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    an = analyse(traced, _kept(model, config))
    _problems(an, config)
    plan = finalize(an)
    report["analyse_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tensors = traced.tensors  # permuted copies replace the traced tensors: no second copy of the state
    _check_dtypes(tensors, plan)
    if config.permute and plan.groups:
        report.update(_permute_groups(tensors, plan, config))
    report["permute_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if config.quadrature == "simpson":
        even = [f"{g.name} ({g.size})" for g in plan.groups if g.size % 2 == 0]
        if even:
            raise ValueError(f"Simpson's rule needs an odd number of channels, but these groups have an "
                             f"even number: {even[:5]}{'...' if len(even) > 5 else ''}; use another quadrature")
    partitions = {g.name: UniformPartition(g.size, config.quadrature) for g in plan.groups}
    full_weights = {n: p.full_weights(dtype=torch.float64) for n, p in partitions.items()}
    functions = {}
    for name, dim_plans in plan.tensors.items():
        # popped and taken: a traced tensor (convert's own) becomes its function's control values
        functions[name] = StructuredFunction(tensors.pop(name), dim_plans, full_weights, config.kind,
                                             take=True)
        if name not in traced.trainable:  # a buffer (running statistics): follows sizes, never trained
            functions[name].requires_grad_(False)
    fixed = dict(tensors)  # what is left: the tensors no group reads
    tensor_names = [traced.source[n] for n in traced.graph.nodes if n in traced.source]
    group_index = {root: i for root, i in plan.group_of_root.items()}
    runtime = build_runtime(an, group_index, tensor_names)
    imodel = IntegralModel(runtime, tensor_names, functions, fixed, traced.trainable, plan.groups,
                           partitions, plan.contractions, traced.in_spec, traced.out_spec)
    report["fit_s"] = time.perf_counter() - t0
    report["folded_batch_norms"] = len(folded)
    imodel.report = report
    imodel.input_shapes = [tuple(int(d) if is_concrete_int(d) and (i, k) not in traced.static_dims
                                 else hint(d) if (i, k) in traced.static_dims else None
                                 for k, d in enumerate(n.meta["val"].shape))
                           if isinstance(n.meta.get("val"), Tensor) else None
                           for i, n in enumerate(traced.inputs)]
    imodel.input_dtypes = [n.meta["val"].dtype if isinstance(n.meta.get("val"), Tensor) else None
                           for n in traced.inputs]
    imodel.input_guards = list(traced.guards)
    imodel.input_names = [n.name for n in traced.inputs]
    imodel.pinned = dict(plan.pinned)
    imodel.folded_norms = list(traced.folded)
    norm_names = {n for f in traced.folded for n in (f.weight, f.bias, f.mean, f.var) if n is not None}
    # the inputs the graph takes: the example, or (a batch of 1 traced static only when doubled) the
    # doubled batch the graph was traced on, so that the checks below and to_discrete's run at its shapes
    if traced.doubled and any(s is not None and s and s[0] is not None for s in imodel.input_shapes):
        example_inputs, kwargs = traced.example
    imodel._original = make_original(model, example_inputs, set(tensor_names) | norm_names, kwargs)
    imodel.eval()
    if not same_at_batch_one(model, imodel, (example_inputs, kwargs)):
        if traced.doubled:
            check_exact(model, imodel, traced.example)  # wrong at the batch of 2 traced too: not a batch-1 branch
            raise RuntimeError(
                f"{type(model).__name__} computes something else at batch 1 than at batch 2 (a "
                "branch on the batch size: torch.export traces sizes as >= 2 and cannot see it); "
                "convert it with a batch of 2 or more, and the converted network will refuse batch 1")
        traced.guards.extend(
            Guard(("ge", ("dim", i, 0), 2), f"{n.name}.shape[0] in [2, inf) (it branches on a batch of 1)",
                  "range")
            for i, n in enumerate(traced.inputs) if (imodel.input_shapes[i] or (0,))[0] is None)
        imodel.runtime = build_runtime(an, group_index, tensor_names)
        imodel.input_guards = list(traced.guards)
    if config.check:
        check_exact(model, imodel, (example_inputs, kwargs))
    release_memory(nbytes)  # the traced and permuted copies, and the checks' activations
    return imodel
