"""IntegralModel: a converted network whose channel groups can be resized at will.

Returned by :func:`torchinn.convert`. It runs the traced graph of the original network with every
grouped tensor sampled from its continuous functions on the groups' current partitions.

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> imodel = inn.convert(net, (torch.randn(2, 8),))
>>> imodel.groups
Groups(
  '0.weight:0': 32/32 channels, 3 tensor dims
)
>>> _ = imodel.resize(0.5)
>>> small = imodel.to_discrete()
>>> small.get_parameter("0.weight").shape
torch.Size([16, 8])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from ..graph.build import specialize
from ..graph.groups import ContractionSpec, GroupInfo
from ..graph.guards import Guard
from ..graph.norms import norm_statistics
from .inputs import input_problem
from ..maths.partition import Partition, UniformPartition
from ..discrete.rebuild import Original
from .protocol import SizeSpec, plan_sizes, set_sizes
from ..sizing.rounding import Multiple
from ..maths.sampling import SampleCache, ratio_vector, sample_tensors
from ..maths.structured import StructuredFunction, plan_size, plan_vector
from .groups import Group, Groups, module_key
from .user_module import user_module

__all__ = ["Group", "Groups", "IntegralModel"]


class IntegralModel(nn.Module):
    """A network with continuous channel groups (see :func:`torchinn.convert`); it implements
    :class:`~torchinn.model.protocol.IntegralNetwork`.

    * ``groups``: the channel groups by name, each with its partition (:meth:`partition_map`:
      the partitions alone);
    * :meth:`sizes` / :meth:`resize`: every group's size / new sizes for all or some groups;
    * :meth:`to_discrete`: a plain copy of the converted module at the current sizes (its own
      class; ``graph=True``: the ``torch.fx.GraphModule`` of the runtime);
    * ``forward``: the network at the current sizes, differentiable in every continuous
      function and trainable partition.
    """

    def __init__(self, runtime: fx.GraphModule, tensor_names: list[str],
                 functions: Mapping[str, StructuredFunction], fixed: Mapping[str, Tensor],
                 trainable: set[str], groups: list[GroupInfo], partitions: Mapping[str, Partition],
                 contractions: list[ContractionSpec], in_spec: pytree.TreeSpec,
                 out_spec: pytree.TreeSpec) -> None:
        super().__init__()
        self.runtime = runtime
        self.tensor_names = list(tensor_names)
        self.functions = nn.ModuleDict({module_key(n): f for n, f in functions.items()})
        self.fixed = nn.Module()
        for name, t in fixed.items():
            if name in trainable and t.is_floating_point():
                self.fixed.register_parameter(module_key(name), nn.Parameter(t))
            else:
                self.fixed.register_buffer(module_key(name), t)
        self.trainable = set(trainable)
        self.partitions = nn.ModuleDict({module_key(g.name): partitions[g.name] for g in groups})
        self._members = {g.name: list(g.members) for g in groups}
        self.group_names = [g.name for g in groups]
        self.contractions = list(contractions)
        self.in_spec, self.out_spec = in_spec, out_spec
        self.report: dict[str, Any] = {}
        #: tensor dimensions (``"name:dim"``) kept at full size, and why (from conversion)
        self.pinned: dict[str, str] = {}
        #: per flattened input: its shape when converted, ``None`` where any size works
        self.input_shapes: list[tuple[int | None, ...] | None] = []
        #: per flattened input: its dtype when converted (``None``: not a tensor, or not known; a
        #: model loaded from a file does not know them); calibration batches are checked against it
        self.input_dtypes: list[torch.dtype | None] = []
        #: conditions on input sizes and Python inputs the traced graph holds under (the runtime
        #: graph asserts them too, so a model loaded without them still refuses bad inputs)
        self.input_guards: list[Guard] = []
        self.input_names: list[str] = []
        #: the user's module as a template and the example inputs (see :mod:`torchinn.discrete.rebuild`);
        #: ``None`` for a model loaded from a file
        self._original: Original | None = None
        #: batch norms folded at conversion (:class:`torchinn.graph.fuse.Folded`)
        self.folded_norms: list = []
        #: ``True`` for networks from :func:`torchinn.from_scratch`: in training mode, batch norms
        #: normalise by each batch's statistics (as a plain network being trained does) and leave
        #: their running statistics alone (re-estimate them at the sizes you deploy with
        #: :func:`torchinn.recalibrate_bn`). ``False`` (converted networks): batch norms keep their
        #: trained running statistics in every mode, so fine-tuning does not disturb them.
        self.batch_statistics = False
        self._cache = SampleCache()
        #: tensor name (as :func:`module_key` spells it) -> a tensor added to it after sampling, of its
        #: sampled shape (an elastic network's per-size bias corrections); none by default
        self.offsets = nn.ParameterDict()
        # the sizes the running statistics were estimated at ("any": as built; None: stale)
        self._stats_sizes: dict[str, int] | str | None = "any"
        #: the traced inputs: guards on their sizes and their names (set by :func:`torchinn.convert`)
        self.input_guards: list = []
        self.input_names: list[str] = []

    # -- groups and sizes -------------------------------------------------------------------
    @property
    def groups(self) -> Groups:
        """The channel groups by name (one object, built once: each group reads its current partition)."""
        if self.__dict__.get("_groups_view") is None:
            self.__dict__["_groups_view"] = Groups([Group(n, self.partitions, self._members[n]) for n in self.group_names])
        return self.__dict__["_groups_view"]

    def partition(self, group: str) -> Partition:
        return self.partitions[module_key(self.groups[group].name)]

    def set_partition(self, group: str, partition: Partition) -> None:
        """Replace a group's partition (e.g. by a :class:`TrainablePartition`). The partition is
        moved to the model's device, and to float64 if the model is float64 (its points then
        have the model's precision); lower precisions keep the partition's own."""
        old = self.partition(group)
        if partition.max_size != old.max_size:
            raise ValueError(f"group {group!r} has {old.max_size} channels; the new partition has "
                             f"max_size={partition.max_size}")
        like = next((t for t in self.parameters() if t.is_floating_point()), None)
        if like is not None:
            partition = partition.to(device=like.device, dtype=torch.float64 if like.dtype == torch.float64 else None)
        self.partitions[module_key(self.groups[group].name)] = partition
        self._cache.clear()

    def sizes(self) -> dict[str, int]:
        """Current size of every group."""
        return {n: self.partitions[module_key(n)].size for n in self.group_names}

    def resize(self, sizes: SizeSpec, *, multiple: Multiple = 1) -> dict[str, int]:
        """Set group sizes: one ratio in (0, 1] (a float) or size (an int) for every resizable
        group, or a mapping from group name (or the module that produces it) to a size or a ratio.
        ``multiple`` (one int, or group name -> int; default 1: none) rounds every size asked to
        the nearest multiple or the group's full size (:mod:`torchinn.sizing.rounding`). Every entry is
        checked before any group changes. Returns every group's size (the rules, shared with
        from-scratch networks: :mod:`torchinn.model.protocol`).

        A network that trains its batch norms on batch statistics (:attr:`batch_statistics`, from
        :func:`torchinn.from_scratch`) needs its running statistics re-estimated at the new sizes:
        call :func:`torchinn.recalibrate_bn` after resizing, before evaluating or ``to_discrete``."""
        groups = self.groups
        set_sizes(plan_sizes(self.partition_map(), sizes, lambda name: groups[name].name, multiple))
        return self.sizes()

    # -- running ------------------------------------------------------------------------------
    def partition_map(self) -> dict[str, Partition]:
        """Every group's partition, by group name."""
        return {n: self.partitions[module_key(n)] for n in self.group_names}

    def norm_statistics(self) -> list[tuple[str, str]]:
        """``(running_mean, running_var)`` tensor names of every batch norm that keeps running
        statistics (none where batch norms were folded at conversion)."""
        cached = self.__dict__.get("_norm_stats")
        if cached is None or cached[0] != id(self.runtime):
            cached = (id(self.runtime), norm_statistics(self.runtime, self.tensor_names))
            self.__dict__["_norm_stats"] = cached
        return cached[1]

    def _sample(self) -> tuple[list[Tensor], list[Tensor]]:
        parts = self.partition_map()
        variances = {var for _, var in self.norm_statistics()}
        tensors = []
        offsets = self._modules.get("offsets") or {}  # a model pickled before offsets existed has none
        sampled = sample_tensors(self.functions, parts)  # the sampler of the Integral* layers too
        for name in self.tensor_names:
            key = module_key(name)
            if key in self.functions:
                t = sampled[key]
                # buffers (e.g. batch-norm running statistics, which aten.batch_norm refuses to
                # differentiate) follow the partitions but get no gradient
                if name in variances:  # interpolation may overshoot below zero: no variance is
                    t = t.clamp_min(0)     # negative (exact at full size, where none is)
                tensors.append(t if name in self.trainable else t.detach())
            else:
                tensors.append(getattr(self.fixed, key))
            if key in offsets:
                if offsets[key].shape != tensors[-1].shape:
                    raise ValueError(f"the offset of {name!r} has shape {tuple(offsets[key].shape)}, the tensor "
                                     f"sampled at the current sizes {tuple(tensors[-1].shape)}")
                tensors[-1] = tensors[-1] + offsets[key].to(tensors[-1].dtype)
        like = tensors[0] if tensors else torch.empty(0)
        like = next((t for t in tensors if t.is_floating_point()), like)
        scales = []
        ratios: dict[str, Tensor] = {}
        for spec in self.contractions:
            for seg in spec.plan:
                for a in seg:
                    if a.group is not None and a.group not in ratios:
                        ratios[a.group] = ratio_vector(parts[a.group], like)
            v = plan_vector(spec.plan, ratios, like)
            if spec.mean:
                sizes = {n: p.size for n, p in parts.items()}
                v = v * (plan_size(spec.plan, sizes) / plan_size(spec.plan))
            scales.append(v.reshape([-1] + [1] * (spec.ndim - spec.dim - 1)))
        return tensors, scales

    def sampled(self) -> tuple[list[Tensor], list[Tensor]]:
        """Tensors and contraction scales at the current sizes (cached in eval mode while nothing
        needs a gradient: :class:`~torchinn.maths.sampling.SampleCache`, as the ``Integral*`` layers)."""
        return self._cache.get(self, self.partitions.values(), self._sample)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        flat, problem = input_problem(self, args, kwargs)
        if problem is not None:
            raise ValueError(problem)
        tensors, scales = self.sampled()
        sizes = [self.partitions[module_key(n)].size for n in self.group_names]
        norm_training = self.training and self.batch_statistics
        if norm_training and self.norm_statistics():
            # batch norms write running statistics into the tensors they get: give them copies
            # (they must not move the continuous ones: sizes change at every step)
            index = {n: i for i, n in enumerate(self.tensor_names)}
            tensors = list(tensors)
            for pair in self.norm_statistics():
                for n in pair:
                    tensors[index[n]] = tensors[index[n]].clone()
            self._stats_sizes = None
        elif not self.training and self.batch_statistics:
            self._warn_stale_statistics()
        out = self.runtime(tensors, sizes, scales, self.training, norm_training, *flat)
        return pytree.tree_unflatten(list(out), self.out_spec)

    def _warn_stale_statistics(self, stacklevel: int = 5) -> None:
        done = self._stats_sizes
        if done == "any" or not self.norm_statistics():
            return
        sizes = self.sizes()
        if done == sizes or self.__dict__.get("_stats_warned") == (repr(done), repr(sizes)):
            return
        self.__dict__["_stats_warned"] = (repr(done), repr(sizes))  # once per state
        what = "were not re-estimated since training" if done is None else f"were estimated at {done}"
        warnings.warn(f"the batch norm running statistics {what}; the network now runs at {sizes}: "
                      "call torchinn.recalibrate_bn(imodel, batches) at these sizes first", stacklevel=stacklevel)

    # -- tensors and counts -------------------------------------------------------------------
    def plans(self) -> dict[str, tuple]:
        """The channel plan of every grouped tensor (see :mod:`torchinn.maths.structured`)."""
        return {name: self.functions[module_key(name)].plan for name in self.tensor_names
                if module_key(name) in self.functions}

    def full_partitions(self) -> dict[str, Partition]:
        """Fresh full-size standard partitions for every group (the converted network's)."""
        return {n: UniformPartition(p.max_size, p.quadrature) for n, p in self.partition_map().items()}

    def tensors(self, partitions: Mapping[str, Partition] | None = None,
                names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Every tensor (or those of ``names``) sampled on ``partitions`` (default: the current ones)."""
        names, keys = (self.tensor_names, None) if names is None else (list(names), {module_key(n) for n in names})
        sampled = sample_tensors({k: f for k, f in self.functions.items() if keys is None or k in keys},
                                 self.partition_map() if partitions is None else dict(partitions))
        return {name: sampled[module_key(name)] if module_key(name) in self.functions
                else getattr(self.fixed, module_key(name)) for name in names}

    def num_parameters(self, sizes: Mapping[str, int] | None = None) -> int:
        """Parameters of :meth:`to_discrete` at ``sizes`` (group -> size; default: current)."""
        sizes = dict(self.sizes(), **(sizes or {}))
        plans = self.plans()
        total = 0
        for name in self.tensor_names:
            if name not in self.trainable:
                continue
            if name in plans:
                total += math.prod(plan_size(p, sizes) for p in plans[name])
            else:
                total += getattr(self.fixed, module_key(name)).numel()
        return total

    def discrete_from(self, tensors: Mapping[str, Tensor], sizes: Mapping[str, int],
                      scales: list[Tensor] | None = None, copy: bool = True) -> fx.GraphModule:
        """A plain network from given tensors at given group sizes (used by the baselines);
        contraction scales default to ones (plain channel selection does not rescale).
        ``copy=False``: it holds ``tensors`` themselves, not copies (for tensors the caller made
        for it and does not keep)."""
        sizes = dict(self.sizes(), **sizes)
        if scales is None:
            like = next(t for t in tensors.values() if t.is_floating_point())
            scales = [torch.ones(plan_size(c.plan, sizes), dtype=like.dtype, device=like.device)
                      .reshape([-1] + [1] * (c.ndim - c.dim - 1)) for c in self.contractions]
        return specialize(self.runtime, self.tensor_names, [tensors[n] for n in self.tensor_names],
                          [sizes[n] for n in self.group_names], scales, self.trainable,
                          self.in_spec, self.out_spec, self.input_guards,
                          self.input_names, copies=copy).train(self.training)

    def shared_discrete(self) -> fx.GraphModule:
        """``to_discrete(graph=True)`` without a copy of the weights: the graph module holds the
        tensors this model runs with at the current sizes (:meth:`sampled`): its own where sampling
        leaves them as they are (a channel that is not integrated, at full size), the cached samples
        elsewhere. Biases and 1-D tensors (what ``TuneConfig.train`` may tune) and a tensor whose
        storage another already holds are copies. A reference to read from (a teacher, scores):
        training it, or changing its tensors in place, changes this model."""
        with torch.no_grad():
            tensors, scales = self.sampled()
        held, own = set(), []
        for name, t in zip(self.tensor_names, tensors):
            ptr = t.untyped_storage().data_ptr()
            own.append(t.clone() if ptr in held or t.ndim <= 1 or name.endswith("bias") else t)
            held.add(ptr)
        sizes = [self.partitions[module_key(n)].size for n in self.group_names]
        return specialize(self.runtime, self.tensor_names, own, sizes, scales, self.trainable, self.in_spec,
                          self.out_spec, self.input_guards, self.input_names, copies=False).train(self.training)

    def clear_samples(self) -> None:
        """Drop the tensors kept from the last run (:meth:`sampled`) and for steps that train only
        quadrature weights (:class:`~torchinn.maths.structured.FrozenSamples`): sampled again next."""
        self._cache.clear()
        for fn in self.functions.values():
            fn.frozen.clear()

    # -- discrete ---------------------------------------------------------------------------
    def to_discrete(self, graph: bool = False) -> nn.Module:
        """A fresh plain network at the current sizes; ``self`` is unchanged. Its batch norms
        hold the running statistics sampled at the current sizes: for a network from
        :func:`torchinn.from_scratch`, run :func:`torchinn.recalibrate_bn` first.

        By default it is **a copy of the module that was converted**: the same class, submodule
        names and methods, each resized layer replaced by one of the same type carrying the
        sampled weights (``in/out_features``, ``in/out_channels``, ``groups``, ``num_features``,
        ``normalized_shape``, ``nn.MultiheadAttention``'s ``embed_dim``/``head_dim`` and
        size-named attributes of the user's own classes such as ``head_dim`` follow), so
        ``state_dict()`` loads into the same class built at the smaller sizes. A batch norm
        that conversion folded into the layer before it comes back as a batch norm that does
        nothing (weight 1, mean 0, variance ``1 - eps``), the folded weights in that layer.
        The copy is checked on the conversion's example inputs against the graph module
        below; if it fails (a ``forward`` that hard-codes a size, ``x.view(-1, 1024)``) or
        differs by more than 1e-5 (relative) and more than 10 times its own float32 noise (the
        rebuilt network against a float64 copy of it; see :mod:`torchinn.discrete.tolerance`), or the
        model was loaded from a file, a
        ``UserWarning`` says why (with the file and line of the user's code that failed) and
        the graph module is returned instead. See :mod:`torchinn.discrete.rebuild`.

        ``graph=True`` asks for the graph module: a ``torch.fx.GraphModule`` of ATen calls whose
        tensors keep the original names, batch norms folded. It has no torchinn class inside
        and runs as is under ``torch.compile``, ``torch.export.export`` (the batch dimension
        can be dynamic), ``torch.onnx.export(..., dynamo=True)``, ``torch.jit.trace`` and
        ``torch.save`` / ``torch.load(weights_only=False)`` (no torchinn import needed to
        load). Two TorchScript limits (tests/test_export.py): ``torch.jit.script`` rejects the
        ``torch.ops.aten.<op>.<overload>`` calls in its code, so first replace each
        ``node.target`` that is a ``torch._ops.OpOverload`` by ``node.target.overloadpacket``
        and ``recompile()``; and ``torch.jit.trace`` keeps the traced batch size in graphs
        that compute shapes from it (ViT reshapes), so use torch.export or ONNX for those.
        """
        if self.batch_statistics:
            self._warn_stale_statistics(stacklevel=3)
        with torch.no_grad():  # what the last run at these sizes sampled, if it is kept
            tensors, scales = self.sampled()
        sizes = [self.partitions[module_key(n)].size for n in self.group_names]
        gm = specialize(self.runtime, self.tensor_names, tensors, sizes, scales, self.trainable,
                        self.in_spec, self.out_spec, self.input_guards,
                        self.input_names).train(self.training)
        if graph:
            return gm
        return user_module(self, gm, dict(zip(self.tensor_names, tensors)), "to_discrete()", sampled=True)

    def module_from(self, gm: fx.GraphModule, *, share: bool = False) -> nn.Module:
        """The user's module (as :meth:`to_discrete` gives it back) carrying the tensors of
        ``gm``: a graph module of this model at any sizes, from ``to_discrete(graph=True)``,
        :func:`torchinn.prune` or :func:`torchinn.compress`, fine-tuned or not. Falls back to
        ``gm`` itself, with a ``UserWarning`` saying why, where :meth:`to_discrete` would.
        ``share=True``: the module holds ``gm``'s tensors where it can (no copy of the weights;
        for a ``gm`` that is not used after). A tensor that no op of ``gm`` reads (a dead branch:
        BERT's pooler under a sentence embedder) is not in ``gm``: it comes at the current sizes."""
        held = dict(gm.named_parameters(remove_duplicate=False)) | dict(gm.named_buffers(remove_duplicate=False))
        spare = self.tensors(names=[n for n in self.tensor_names if n not in held])  # only the missing are sampled
        named = {n: held[n] if n in held else spare[n].detach() for n in self.tensor_names}
        return user_module(self, gm, named, "module_from()", share=share)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_norm_stats", None)
        state.pop("_groups_view", None)  # rebuilt on the next access
        # TreeSpecs as strings: copying the objects trips a deprecation warning in torch's pytree
        state["in_spec"] = pytree.treespec_dumps(self.in_spec)
        state["out_spec"] = pytree.treespec_dumps(self.out_spec)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        for k in ("in_spec", "out_spec"):
            if isinstance(state.get(k), str):
                state[k] = pytree.treespec_loads(state[k])
        self.__dict__.update(state)

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{n}={s}" for n, s in list(self.sizes().items())[:6])
        more = "..." if len(self.group_names) > 6 else ""
        return f"groups={len(self.group_names)} ({sizes}{more})"

