"""Modules of the user's class that the traced forward does not reach but that read resized channels.

A face detector whose ``forward`` gives class scores while ``detect()`` also runs ``box_head`` on the
same features: conversion sees only ``forward``, so ``box_head`` is in no group, and after
:meth:`~torchinn.IntegralModel.to_discrete` it would still expect the full number of channels that
the layer before it no longer gives. :func:`fix_heads` looks at the first layer with parameters of
every part of the module tree that has no tensor on the graph (an *off-graph* part, e.g.
``box_head`` or ``box_head.0`` of a ``Sequential`` head):

* **resized** when that is unambiguous: a ``nn.Linear`` or a non-transposed, ungrouped
  ``nn.Conv1d/2d/3d`` whose input size equals the full size of exactly one group, a group that a
  layer on the graph reads as its whole input dimension and whose producers or readers sit under
  the off-graph part's parent module. Its weight is sampled on that group's current partition as a
  reader on the graph would be (interpolated, with the quadrature weights), so it reads the
  channels the layer before now gives; at full size it is left untouched;
* otherwise, when its input size (``in_features``, ``in_channels``, ``num_features``, the last of
  ``normalized_shape``) equals the full size of a resized group or of a resized input dimension,
  it is named in a warning: torchinn cannot tell which channels it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn

from ..maths.partition import Partition
from ..maths.structured import Atom, DimPlan, StructuredFunction, plan_size

__all__ = ["fix_heads"]


def _in_size(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.in_features
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.in_channels
    if isinstance(m, nn.modules.batchnorm._NormBase):
        return m.num_features
    if isinstance(m, nn.LayerNorm) and m.normalized_shape:
        return m.normalized_shape[-1]
    return None


def _off_graph_parts(module: nn.Module, on_graph: set[str]) -> list[tuple[str, str, nn.Module]]:
    """(part, first layer's name, first layer) for every highest subtree of ``module`` with no tensor
    in ``on_graph``, whose first module with parameters of its own is the layer."""
    used = {name.rpartition(".")[0] for name in on_graph}  # modules holding a tensor on the graph
    touched = {""}
    for name in used:
        parts = name.split(".") if name else []
        touched.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    out = []
    for name, m in module.named_modules():
        parent = name.rpartition(".")[0]
        if not name or name in touched or parent not in touched:
            continue  # on the graph, or inside an off-graph part already listed
        first = next(((n, sub) for n, sub in m.named_modules(prefix=name)
                      if any(True for _ in sub.parameters(recurse=False))), None)
        if first is not None:
            out.append((name, first[0], first[1]))
    return out


def _near(part: str, modules: Iterable[str]) -> bool:
    """Whether one of ``modules`` sits under the parent of ``part`` (beside it or below a sibling)."""
    parent = part.rpartition(".")[0]
    return any(not parent or m == parent or m.startswith(parent + ".") for m in modules)


def _resized_weight(w: Tensor, group: str, atom: Atom, partition: Partition, kind: str) -> Tensor:
    plan: tuple[DimPlan, ...] = (((Atom(w.shape[0]),),), ((atom,),),
                                 *(((Atom(k),),) for k in w.shape[2:]))
    fn = StructuredFunction(w.detach(), plan, {group: partition.full_weights(dtype=w.dtype)}, kind)  # type: ignore[arg-type]
    return fn.to(w.device).sample({group: partition})


def fix_heads(module: nn.Module, on_graph: set[str], plans: Mapping[str, tuple[DimPlan, ...]],
              partitions: Mapping[str, Partition], kind: str, can_sample: bool = True) -> list[str]:
    """Resize, in place in ``module`` (the rebuilt user's module), the off-graph layers that
    unambiguously read one resized group (see the module docstring); return a message per
    off-graph layer that reads a resized size but could not be resized. ``on_graph``: the names of
    the tensors of the graph; ``can_sample=False``: the tensors did not come from the partitions
    (a graph module given to ``module_from``), so nothing is resized, only named."""
    resized = {g for g, p in partitions.items() if not p.is_standard}
    if not resized:
        return []
    by_size: dict[int, list[str]] = {}
    for g, p in partitions.items():
        by_size.setdefault(p.max_size, []).append(g)
    whole: dict[str, Atom] = {}        # group -> the atom of a layer reading it as its whole input
    near: dict[str, set[str]] = {}     # group -> modules producing or reading it
    dims: dict[int, str] = {}          # full size of a dimension holding a resized group -> a group
    for name, plan in plans.items():
        for dim_plan in plan:
            atoms = [a for seg in dim_plan for a in seg if a.group is not None]
            for a in atoms:
                near.setdefault(a.group, set()).add(name.rpartition(".")[0])
                if a.group in resized:
                    dims.setdefault(plan_size(dim_plan), a.group)
            if len(dim_plan) == 1 and len(dim_plan[0]) == 1 and atoms and atoms[0].integrate:
                whole.setdefault(atoms[0].group, atoms[0])
    messages = []
    for part, name, m in _off_graph_parts(module, on_graph):
        n = _in_size(m)
        if n is None or (n not in dims and not set(by_size.get(n, ())) & resized):
            continue
        groups = by_size.get(n, [])
        g = groups[0] if len(groups) == 1 else None
        if (can_sample and g in resized and g in whole and _near(part, near[g])
                and (isinstance(m, nn.Linear) or isinstance(m, nn.modules.conv._ConvNd)
                     and not m.transposed and m.groups == 1 and m.weight.ndim >= 3)):
            p = partitions[g]
            m.weight = nn.Parameter(_resized_weight(m.weight, g, whole[g], p, kind),
                                    requires_grad=m.weight.requires_grad)
            if isinstance(m, nn.Linear):
                m.in_features = p.size
            else:
                m.in_channels = p.size
            continue
        cands = [x for x in groups if x in resized] or [dims[n]]
        now = (f", but the layer before now gives {partitions[cands[0]].size} (group {cands[0]!r})"
               if len(cands) == 1 and cands[0] in groups else
               f"; the resized groups of that size are {cands} (now {[partitions[x].size for x in cands]})"
               if cands[0] in groups else f" (a dimension holding group {cands[0]!r})")
        owners = sorted({t.rpartition(".")[0] for t, plan in plans.items()
                         if any(a.group in cands and not a.integrate for d in plan for s in d for a in s)})
        keep = f"ConvertConfig(keep_discrete={owners[:3]!r})" if owners else "ConvertConfig(keep_discrete=...)"
        why = "" if can_sample else " (the tensors come from a graph module, not from the partitions)"
        messages.append(f"module {name!r} is not used by forward, so torchinn cannot tell which channels it "
                        f"reads{why}; it still expects {n} input channels{now}: call it at your own risk, "
                        f"or keep those channels with {keep}")
    return messages
