"""What a budget counts, as a function of group sizes: parameters exactly, FLOPs per element of
each grouped tensor (measured once on the full-size discrete network), latency through the FLOPs it
follows. :func:`torchinn.choose_sizes` asks it for every move of its greedy allocation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from ..maths.structured import plan_size
from ..model.groups import module_key
from ..model.integral_model import IntegralModel
from ..sizing.metrics import Metric, count_flops, flops_by_tensor, measure_latency

__all__ = ["Cost"]


class Cost:
    """A metric (parameters, FLOPs or latency) of an integral model as a function of its group sizes."""

    def __init__(self, imodel: IntegralModel, metric: Metric, inputs: tuple) -> None:
        self.imodel, self.metric, self.inputs = imodel, metric, inputs
        self.plans = imodel.plans()
        self.per_element: dict[str, float] = {}
        self.other = 0.0
        if metric in ("flops", "latency"):
            full = imodel.sizes()
            imodel.resize({n: imodel.groups[n].max_size for n in full})
            try:
                small = imodel.to_discrete(graph=True).eval()
            finally:
                imodel.resize(full)
            by_tensor, other = flops_by_tensor(small, inputs)
            numel = {n: t.numel() for n, t in list(small.named_parameters()) + list(small.named_buffers())}
            self.other = float(other)
            for name, flops in by_tensor.items():
                if name in self.plans:
                    self.per_element[name] = flops / numel[name]
                else:  # a tensor outside every group: its FLOPs do not change
                    self.other += flops
        else:  # parameters: one per element of every trainable grouped tensor, the rest fixed
            self.per_element = {n: 1.0 for n in imodel.tensor_names if n in imodel.trainable and n in self.plans}
            full = {n: g.max_size for n, g in imodel.groups.items()}
            self.other = float(imodel.num_parameters(full)) - self._grouped(full, self.per_element)
        # group -> the tensors whose size it changes (a move of one group re-counts only those)
        self.touching: dict[str, list[str]] = {}
        for name in self.per_element:
            for g in {a.group for p in self.plans[name] for seg in p for a in seg if a.group is not None}:
                self.touching.setdefault(g, []).append(name)

    def amount(self, value: float) -> str:
        """``value`` of :meth:`model` with its unit (latency is modelled by FLOPs)."""
        if self.metric == "params":
            return f"{value:,.0f} parameters"
        return f"{value:.4g} FLOPs"

    @property
    def note(self) -> str:
        return " (latency is budgeted through the FLOPs it is measured to follow)" if self.metric == "latency" else ""

    def fixed_note(self, top: int = 2) -> str:
        """Why a budget can be out of reach: the share of the metric that no group changes and, for
        parameters, the ``top`` largest tensors that no group resizes, with why they stay (the pin
        reasons). A sentence-embedding BERT whose output width is the hidden size keeps its word
        embeddings: more than half its parameters."""
        full = {n: g.max_size for n, g in self.imodel.groups.items()}
        total = self.model(full)
        if total <= 0 or self.other <= 0:
            return ""
        text = f"; {self.amount(self.other)} ({100 * self.other / total:.0f}%) change with no group size"
        if self.metric != "params":
            return text
        sizes = {n: getattr(self.imodel.fixed, module_key(n)).numel() for n in self.imodel.tensor_names
                 if n in self.imodel.trainable and n not in self.plans}
        largest = sorted(sizes, key=lambda n: -sizes[n])[:top]
        if not largest:
            return text
        pins = self.imodel.pinned
        why = [f"'{n}' ({sizes[n]:,}: " + "; ".join(sorted({r for k, r in pins.items() if k.rsplit(":", 1)[0] == n})
                                                    or {"read by no group"}) + ")" for n in largest]
        return f"{text}, the largest {', '.join(why)}"

    def _grouped(self, sizes: Mapping[str, int], names: Iterable[str]) -> float:
        return sum(self.per_element[name] * math.prod(plan_size(p, sizes) for p in self.plans[name])
                   for name in names)

    def model(self, sizes: Mapping[str, int]) -> float:
        """The metric predicted from sizes (FLOPs for the latency metric); groups not in
        ``sizes`` at their current size."""
        if len(sizes) < len(self.imodel.groups):
            sizes = dict(self.imodel.sizes(), **sizes)
        return self.other + self._grouped(sizes, self.per_element)

    def saved(self, sizes: Mapping[str, int], group: str, new: int) -> float:
        """``model(sizes) - model(sizes with group at new)``, counting only the tensors the group
        changes (the greedy allocation asks this for every group at every step)."""
        names = self.touching.get(group, [])
        return self._grouped(sizes, names) - self._grouped(dict(sizes, **{group: new}), names)

    def measure(self, sizes: Mapping[str, int]) -> float:
        """The metric of the real discrete network at ``sizes``."""
        if self.metric == "params":
            return float(self.imodel.num_parameters(sizes))
        saved = self.imodel.sizes()
        self.imodel.resize(dict(sizes))
        try:
            small = self.imodel.to_discrete(graph=True).eval()
        finally:
            self.imodel.resize(saved)
        if self.metric == "flops":
            return float(count_flops(small, self.inputs))
        return measure_latency(small, self.inputs)
