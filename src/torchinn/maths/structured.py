"""A tensor of a converted network as continuous functions of its channel groups.

Each dimension of a tensor has a *plan*: a concatenation of segments, each segment a row-major
product of atoms, each atom either fixed positions or the channels of one group (see
:mod:`torchinn.graph.labels` for where plans come from). Examples:

* a conv weight ``(out, in, 3, 3)``: ``[[out group]], [[in group]], [[3]], [[3]]``;
* a linear layer after ``flatten`` of a ``(C, 4, 4)`` map: input dim ``[[C group, 16]]``;
* a conv reading ``torch.cat([a, b], 1)``: input dim ``[[a group], [b group]]``;
* a fused ``qkv`` projection reshaped into heads: output dim ``[[3, heads group, head size]]``.

:class:`StructuredFunction` cuts the tensor into blocks (one per combination of segments),
views each block with its atoms as separate dimensions, and keeps it as a
:class:`~torchinn.maths.functions.ContinuousFunction` of its group atoms. Atoms marked ``integrate``
(a layer's input channels) hold ``tensor / (n * q_full)`` (``n`` channels; ``n * q_full`` is 1 on
average, so the values keep the tensor's magnitude) and are multiplied by ``n * q`` of the
current partition when sampled, so at the full size the original tensor comes back.

When only the quadrature weights of a sample need a gradient (the control values frozen, the
points fixed: the per-channel scales of :class:`~torchinn.elastic.scaled.ScaledPartition`), the
sample before those weights does not change from one step to the next: it is kept
(:class:`FrozenSamples`) and each step multiplies it by the weights, one pass over the sampled
tensor instead of interpolating the control values forward and backward.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .functions import ContinuousFunction, Kind
from .partition import Partition, UniformPartition

__all__ = ["Atom", "DimPlan", "StructuredFunction", "plan_size", "plan_vector", "take_channels"]


@dataclass(frozen=True)
class Atom:
    """``size`` positions: fixed (``group is None``) or the channels of ``group``."""

    size: int
    group: str | None = None
    integrate: bool = False


Segment = tuple[Atom, ...]
DimPlan = tuple[Segment, ...]


def plan_size(plan: DimPlan, sizes: Mapping[str, int] | None = None) -> int:
    """Number of positions of a dimension (current sizes from ``sizes``, else full)."""
    def atom(a: Atom) -> int:
        return sizes[a.group] if sizes is not None and a.group is not None else a.size
    return sum(math.prod(atom(a) for a in seg) for seg in plan)


def plan_vector(plan: DimPlan, vectors: Mapping[str, Tensor], like: Tensor) -> Tensor:
    """A vector along a dimension: per group atom the given vector, ones for fixed atoms
    (Kronecker product within a segment, concatenated across segments)."""
    out = []
    for seg in plan:
        v = torch.ones((), dtype=like.dtype, device=like.device)
        for a in seg:
            w = vectors[a.group] if a.group is not None else torch.ones(a.size, dtype=like.dtype,
                                                                           device=like.device)
            v = torch.outer(v.reshape(-1), w).reshape(-1)
        out.append(v.reshape(-1))
    return torch.cat(out)


class FrozenSamples:
    """A :class:`StructuredFunction`'s blocks sampled before their quadrature weights, kept
    while the control values and the partitions' points stay the same (keys: the values'
    storage and version, each partition's identity and :meth:`~torchinn.maths.partition.Partition.points_key`).
    At most ``MAX_ENTRIES`` per block (one per deployed size, say: ``blocks`` blocks), cleared
    when full. A copy or a pickle starts empty."""

    MAX_ENTRIES = 8

    def __init__(self, blocks: int = 1) -> None:
        self.limit = self.MAX_ENTRIES * max(1, blocks)
        self._entries: dict[tuple, tuple[Tensor, tuple]] = {}

    def get(self, key: tuple, alive: tuple, sample: Any) -> Tensor:
        """The kept tensor for ``key``, or ``sample()`` (run without gradients) kept under it;
        ``alive`` (the objects whose ids are in ``key``) are kept with the entry, so that
        their ids stay unique."""
        hit = self._entries.get(key)
        if hit is None:
            with torch.no_grad():
                value = sample()
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[key] = hit = (value, alive)
        return hit[0]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __reduce__(self) -> tuple:
        return (FrozenSamples, (self.limit // self.MAX_ENTRIES,))


def _frozen(values: Tensor, grids: Mapping[int, Any], weights: Mapping[int, Tensor]) -> bool:
    """Whether, of this sample, only the quadrature weights of its partitions (``weights``, one
    per dim in ``grids``) need a gradient: the control values and the points do not."""
    return (torch.is_grad_enabled() and not values.requires_grad and bool(grids)
            and any(w.requires_grad for w in weights.values())
            and not any(c.points.requires_grad for chunks in grids.values() for c in chunks))


def _points_key(p: Partition) -> tuple:
    """What the points of ``p`` are: a uniform partition's follow from its type, size and rule
    (an elastic network makes a new one at every resize), any other's from its identity and
    :meth:`~torchinn.maths.partition.Partition.points_key`."""
    if isinstance(p, UniformPartition):
        return (type(p), p.max_size, p.quadrature.name, p.size)
    return (id(p), type(p), p.points_key())


def _scaled(block: Tensor, scales: Mapping[int, Tensor]) -> Tensor:
    """``block`` times ``scales[d]`` along each dim ``d``."""
    for d, scale in scales.items():
        block = block * scale.reshape([-1] + [1] * (block.ndim - d - 1))
    return block


#: elements per float64 pass of :func:`_divided` (32 MiB of float64 temporaries)
_CHUNK = 2**22


def _divided(values: Tensor, scale: Tensor, out: Tensor | None) -> Tensor:
    """``(values.double() / scale).to(values.dtype)`` (``scale`` broadcast along one dim), into
    ``out`` (``values`` itself: in place) or a new contiguous tensor, a few rows at a time: the
    float64 temporaries are a chunk's, not twice and four times the tensor's bytes."""
    out = torch.empty(values.shape, dtype=values.dtype, device=values.device) if out is None else out
    if values.ndim == 0 or values.numel() == 0:
        out.copy_((values.double() / scale).to(values.dtype))
        return out
    step = max(1, _CHUNK // max(1, values[0].numel()))
    for s in range(0, values.shape[0], step):
        sc = scale[s:s + step] if scale.shape[0] > 1 else scale
        out[s:s + step] = (values[s:s + step].double() / sc).to(values.dtype)
    return out


class StructuredFunction(nn.Module):
    """The continuous version of one tensor, sampled on the partitions of its groups."""

    def __init__(self, tensor: Tensor, plan: tuple[DimPlan, ...], full_weights: Mapping[str, Tensor],
                 kind: Kind = "cubic", *, take: bool = False) -> None:
        """``take``: ``tensor`` is the caller's to give away: where it is one block, its storage
        becomes the control values (divided in place where integrated) instead of a copy, so that
        converting a network does not hold its weights twice."""
        super().__init__()
        if len(plan) != tensor.ndim:
            raise ValueError(f"plan has {len(plan)} dims but the tensor has {tensor.ndim}")
        for d, p in enumerate(plan):
            if plan_size(p) != tensor.shape[d]:
                raise ValueError(f"plan of dim {d} covers {plan_size(p)} positions, tensor has {tensor.shape[d]}")
        self.plan = plan
        self.shape = tuple(tensor.shape)
        # 16-bit tensors keep float32 control values (like master weights in mixed precision), so
        # sampling at full size rounds back to exactly the original values
        self.out_dtype = tensor.dtype
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor, take = tensor.float(), True  # a new tensor: ours to take
        self.keys = list(itertools.product(*(range(len(p)) for p in plan)))
        # taken whole: one block, contiguous, alone in its storage (no other tensor's bytes kept)
        take = take and len(self.keys) == 1 and tensor.is_contiguous() and not tensor.requires_grad and (
            tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())
        blocks = []
        for key in self.keys:
            block = tensor
            for d, s in enumerate(key):
                start = sum(math.prod(a.size for a in seg) for seg in plan[d][:s])
                length = math.prod(a.size for a in plan[d][s])
                block = block.narrow(d, start, length)
            atoms = self._atoms(key)
            values = block.reshape([a.size for a in atoms])
            fresh = take
            for pos, a in enumerate(atoms):
                if a.group is not None and a.integrate:
                    shape = [1] * len(atoms)
                    shape[pos] = -1
                    # divided by the scale sample() multiplies by at full size, rounded as it is
                    # there (computed in float64, then cast): the full size gives back the
                    # original up to one rounding of the product, not a few ulps
                    q = full_weights[a.group].double()
                    scale = (q * q.numel()).to(values.dtype).double().reshape(shape)
                    values = _divided(values, scale, values if fresh else None)
                    fresh = True
            dims = [pos for pos, a in enumerate(atoms) if a.group is not None]
            blocks.append(ContinuousFunction(values, dims, kind, copy=not fresh))
        self.blocks = nn.ModuleList(blocks)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        # .double(), .half(), .to(dtype): the sampled tensor follows the conversion too
        self.out_dtype = fn(torch.empty(0, dtype=self.out_dtype)).dtype
        return super()._apply(fn, recurse)

    @property
    def frozen(self) -> FrozenSamples:
        """The samples kept for steps where only the quadrature weights train (see the module)."""
        cache = self.__dict__.get("_frozen")
        if cache is None:  # made on first use (also for a module unpickled without one)
            cache = self.__dict__["_frozen"] = FrozenSamples(len(self.blocks))
        return cache

    def _atoms(self, key: tuple[int, ...]) -> list[Atom]:
        return [a for d, s in enumerate(key) for a in self.plan[d][s]]

    def groups(self) -> set[str]:
        return {a.group for p in self.plan for seg in p for a in seg if a.group is not None}

    def sample(self, partitions: Mapping[str, Partition], memo: dict | None = None) -> Tensor:
        """The tensor at the partitions' current sizes (quadrature fused where integrated).

        ``memo``: a dict shared by the functions sampled in one pass over the same partitions, so
        that each partition's points, weights and interpolation taps are computed once."""
        memo = {} if memo is None else memo

        def cached(what: str, p: Partition, dev: torch.device, dt: torch.dtype) -> Any:
            key = (what, id(p), dev, dt)
            if key not in memo:  # the partition is kept alive with its entry: its id stays unique
                # weights in float64: differences of float32 points near 1 lose digits
                memo[key] = (p.chunks(dev, dt) if what == "chunks"
                             else (p.weights(dev, torch.float64) * p.max_size).to(dt), p)
            return memo[key][0]

        out: dict[tuple[int, ...], Tensor] = {}
        for index, (key, fn) in enumerate(zip(self.keys, self.blocks)):
            values = fn.values
            dev, dt = values.device, values.dtype
            atoms = self._atoms(key)
            grids = {pos: cached("chunks", partitions[a.group], dev, dt) for pos, a in enumerate(atoms)
                     if a.group is not None}
            scales = {pos: cached("weights", partitions[a.group], dev, dt) for pos, a in enumerate(atoms)
                      if a.group is not None and a.integrate}
            weights = {pos: cached("weights", partitions[a.group], dev, dt) for pos in grids
                       for a in atoms[pos:pos + 1]}
            if _frozen(values, grids, weights):  # only the weights train: sample once, scale every step
                parts = tuple(partitions[a.group] for a in atoms if a.group is not None)
                frozen_key = (index, id(values), values.data_ptr(), values._version, dt, fn.kind,
                              tuple(_points_key(p) for p in parts))
                block = _scaled(self.frozen.get(frozen_key, (values, *parts), lambda: fn.sample(grids, memo, None)),
                                scales)
            else:
                block = fn.sample(grids, memo, scales)
            lengths = []
            i = 0
            for d, s in enumerate(key):
                n = len(self.plan[d][s])
                lengths.append(math.prod(block.shape[i:i + n]))
                i += n
            out[key] = block.reshape(lengths)
        result = out[self.keys[0]] if len(self.keys) == 1 else self._assemble(out, ())
        return result if result.dtype == self.out_dtype else result.to(self.out_dtype)

    def _assemble(self, blocks: dict[tuple[int, ...], Tensor], prefix: tuple[int, ...]) -> Tensor:
        d = len(prefix)
        if d == len(self.plan):
            return blocks[prefix]
        parts = [self._assemble(blocks, prefix + (s,)) for s in range(len(self.plan[d]))]
        return parts[0] if len(parts) == 1 else torch.cat(parts, d)

    def extra_repr(self) -> str:
        def dim(p: DimPlan) -> str:
            return "|".join("*".join(a.group or str(a.size) for a in seg) for seg in p)
        return f"shape={self.shape}, plan=({', '.join(dim(p) for p in self.plan)})"


def take_channels(tensor: Tensor, plan: tuple[DimPlan, ...], indices: Mapping[str, Tensor]) -> Tensor:
    """``tensor`` keeping only the channels ``indices[group]`` of each group in its plan (plain
    structured pruning: no interpolation, no quadrature). Groups not in ``indices`` are kept whole."""
    out = tensor
    for d, dim_plan in enumerate(plan):
        if not any(a.group in indices for seg in dim_plan for a in seg):
            continue
        pieces, start = [], 0
        for seg in dim_plan:
            length = math.prod(a.size for a in seg)
            block = out.narrow(d, start, length)
            block = block.reshape(list(out.shape[:d]) + [a.size for a in seg] + list(out.shape[d + 1:]))
            for k, a in enumerate(seg):
                if a.group in indices:
                    block = block.index_select(d + k, indices[a.group].to(block.device))
            sizes = list(block.shape[d:d + len(seg)])
            pieces.append(block.reshape(list(out.shape[:d]) + [math.prod(sizes)] + list(out.shape[d + 1:])))
            start += length
        out = torch.cat(pieces, d) if len(pieces) > 1 else pieces[0]
    return out
