"""From an analysis to channel groups and per-tensor plans.

After :func:`~torchinn.graph.analysis.analyse`, every tensor dimension is a structure over root
axes. :func:`finalize` decides where quadratures go, turns each remaining (unpinned) axis that
reaches a tensor into a named :class:`GroupInfo`, and writes each tensor's
:data:`~torchinn.maths.structured.DimPlan` per dimension.

A group is named after the first tensor dimension that *produces* it (a dimension not summed
over), e.g. ``"layer1.0.conv1.weight:0"``; a second group in the same dimension (a split into
heads, a chunk of a fused projection) gets a suffix ``.1``, ``.2``...
"""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass, field

from torch import fx

from ..maths.structured import Atom, DimPlan
from .analysis import Analysis, Contraction
from .labels import Cat, Fixed, Prod, Struct, Var
from .registry import view_rule

__all__ = ["GroupInfo", "ContractionSpec", "Plan", "finalize"]


@dataclass
class GroupInfo:
    name: str
    size: int
    members: list[tuple[str, int]] = field(default_factory=list)  # (tensor, dim)


@dataclass(frozen=True)
class ContractionSpec:
    """Scale input ``arg`` of a node along ``dim`` (of ``ndim``) by the group ratios over ``plan``."""

    plan: DimPlan
    ndim: int
    dim: int
    mean: bool


@dataclass
class Plan:
    groups: list[GroupInfo]
    group_of_root: dict[int, int]
    tensors: dict[str, tuple[DimPlan, ...]]          # only tensors with at least one group atom
    contractions: list[ContractionSpec]
    pinned: dict[str, str]                           # 'tensor:dim' -> why it stays at full size


def _terminal_users(node: fx.Node) -> set[fx.Node]:
    out: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        for u in n.users:
            if u.target is operator.getitem or view_rule(u.target) is not None:
                stack.append(u)
            else:
                out.add(u)
    return out


def _resolve_integration(an: Analysis) -> dict[str, set[int]]:
    """Accept a parameter-level quadrature only when every use of the parameter asks for the same
    dimension; otherwise scale the activations at each use instead."""
    by_name: dict[str, list[tuple[int, fx.Node, int, int]]] = defaultdict(list)
    for name, pdim, node, arg, adim in an.integrate_requests:
        by_name[name].append((pdim, node, arg, adim))
    placeholder = {v: k for k, v in an.traced.source.items()}
    integrate: dict[str, set[int]] = {}
    for name, reqs in by_name.items():
        dims = {r[0] for r in reqs}
        requesters = {r[1] for r in reqs}
        if len(dims) == 1 and _terminal_users(placeholder[name]) == requesters:
            integrate[name] = dims
        else:
            for _, node, arg, adim in reqs:
                an.contractions.append(Contraction(node, arg, adim))
    return integrate


def _normal(an: Analysis, s: Struct) -> list[list[Struct]] | None:
    """``s`` as segments of atoms, or None if it is not of that form."""
    s = an.resolve(s)
    segments = s.parts if isinstance(s, Cat) else (s,)
    out = []
    for seg in segments:
        atoms = seg.parts if isinstance(seg, Prod) else (seg,)
        if any(not isinstance(a, (Fixed, Var)) for a in atoms):
            return None
        out.append(list(atoms))
    return out


def finalize(an: Analysis) -> Plan:
    integrate = _resolve_integration(an)
    placeholders = [n for n in an.traced.graph.nodes if n.op == "placeholder" and n in an.traced.source]
    # Pin whatever cannot be written as segments of atoms, or repeats an axis within a segment
    # (the same axis in several segments is fine: q, k and v of a fused projection share heads).
    changed = True
    while changed:
        changed = False
        for node in placeholders:
            for s in an.labels[node]:
                segs = _normal(an, s)
                if segs is None or any(len(roots) != len(set(roots)) for roots in (
                        [a.axis for a in seg if isinstance(a, Var)] for seg in segs)):
                    an.pin(s, node, "a dimension torchinn cannot describe")
                    changed = True
    # Groups in order of first appearance as a produced (not integrated) dimension.
    order: list[int] = []
    names: dict[int, str] = {}
    used_names: set[str] = set()
    for prefer_output in (True, False):
        for node in placeholders:
            tname = an.traced.source[node]
            for d, s in enumerate(an.labels[node]):
                if prefer_output and d in integrate.get(tname, ()):
                    continue
                for k, root in enumerate(an.axes.vars(s)):
                    if root in names:
                        continue
                    name = f"{tname}:{d}" + (f".{k}" if k else "")
                    while name in used_names:
                        name += "'"
                    names[root] = name
                    used_names.add(name)
                    order.append(root)
    group_of_root = {root: i for i, root in enumerate(order)}
    groups = [GroupInfo(names[r], an.axes.axis_size(r)) for r in order]
    tensors: dict[str, tuple[DimPlan, ...]] = {}
    for node in placeholders:
        tname = an.traced.source[node]
        plans = []
        has_group = False
        for d, s in enumerate(an.labels[node]):
            segs = _normal(an, s)
            dim_plan = []
            for seg in segs:
                atoms = []
                for a in seg:
                    if isinstance(a, Var):
                        g = groups[group_of_root[a.axis]]
                        atoms.append(Atom(g.size, g.name, d in integrate.get(tname, ())))
                        if (tname, d) not in g.members:
                            g.members.append((tname, d))
                        has_group = True
                    else:
                        atoms.append(Atom(a.size))
                dim_plan.append(tuple(atoms))
            plans.append(tuple(dim_plan))
        if has_group:
            tensors[tname] = tuple(plans)
    contractions = []
    active = []
    for c in an.contractions:
        operand = c.node.args[c.arg] if c.arg >= 0 else c.node.args[1][-1 - c.arg]
        lab = an.labels[operand]
        val = operand.meta["val"]
        segs = _normal(an, lab[c.dim])
        if segs is None:
            raise RuntimeError(f"internal error: contraction over an undescribable dim at {c.node.name}")
        if not any(isinstance(a, Var) for seg in segs for a in seg):
            continue  # the axis ended up fixed: nothing to scale
        plan = tuple(tuple(Atom(an.axes.axis_size(a.axis), groups[group_of_root[a.axis]].name)
                           if isinstance(a, Var) else Atom(a.size) for a in seg) for seg in segs)
        contractions.append(ContractionSpec(plan, val.ndim, c.dim % val.ndim, c.mean))
        active.append(c)
    an.contractions[:] = active  # the runtime graph numbers its scale inputs in this order
    pinned: dict[str, str] = {}
    for node in placeholders:
        tname = an.traced.source[node]
        for d, s in enumerate(an.labels[node]):
            if an.axes.vars(s) or an.axes.size(s) <= 1:
                continue
            why = [r for r in an.axes.reasons(s) if not r.startswith(("kernel taps", "depthwise kernel"))]
            if why:
                pinned[f"{tname}:{d}"] = "; ".join(why)
    return Plan(groups, group_of_root, tensors, contractions, pinned)
