"""One integral network that serves every size: :class:`ElasticNetwork`.

An elastic network is an :class:`~torchinn.IntegralModel` (one set of shared continuous weights)
and, per resizable group, a *ranking* of its channels (most important first, from
:func:`torchinn.make_elastic`). At ``k`` channels a ranked group samples its functions at the
control points of its top ``k`` channels, selection-weighted (the partitions of the
``"activation"`` / ``"fisher"`` starts of :mod:`torchinn.compression.starts`): the partitions of
all sizes are nested, so one set of shared weights can be trained for all of them, and at full
size the network is the converted one exactly. A group without a ranking is resampled on the
quadrature's uniform nodes (the integral network as in the paper).

It implements :class:`~torchinn.model.protocol.IntegralNetwork`: :meth:`resize` by one ratio, a
size, per-group sizes or ratios, or a budget (``target=`` a fraction of the parameters, FLOPs or
latency: :func:`torchinn.choose_sizes`), :meth:`to_discrete` gives the user's class at those
sizes, :meth:`sweep` the (size, parameters, quality) points of a Pareto front. It is saved as one
``.inn`` file (:func:`torchinn.save`; :func:`torchinn.load` gives it back, rankings included).

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> imodel = inn.convert(net, (torch.randn(2, 8),), inn.ConvertConfig(permute=False))
>>> elastic = ElasticNetwork(imodel, {"0.weight:0": list(range(31, -1, -1))})
>>> elastic.resize(0.25)
{'0.weight:0': 8}
>>> elastic.to_discrete()[0].weight.shape
torch.Size([8, 8])
>>> torch.allclose(elastic.to_discrete()[0].weight, net[0].weight[24:], atol=1e-6)   # the top 8 channels
True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..compression.budget import choose_sizes
from ..compression.starts import distill_error, start_partition
from ..maths.partition import Partition, UniformPartition
from ..maths.trainable import TrainablePartition
from ..model.groups import module_key
from ..model.integral_model import IntegralModel
from ..model.norms import recalibrate_bn
from ..model.protocol import SizeSpec, plan_sizes
from ..sizing.metrics import Metric
from ..sizing.rounding import Multiple
from ..training.distill import Distillation
from .scaled import ScaledPartition

__all__ = ["DEPLOY_KINDS", "DeployedSize", "ElasticNetwork", "SweepPoint", "check_order"]

#: what a deployed size trains beside the shared weights (:meth:`ElasticNetwork.deploy`)
DEPLOY_KINDS = ("scales", "partitions", "scales-bias", "scales-refit")


def check_order(order: object, max_size: int, group: str) -> Tensor:
    """``order`` (a sequence or 1-D integer tensor) as a ``long`` tensor, if it is a permutation of
    ``range(max_size)``; else a ``ValueError`` naming the group."""
    try:
        t = torch.as_tensor(order)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"the ranking of group {group!r} must be a permutation of range({max_size}), "
                         f"got {type(order).__name__} ({err})") from None
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex or t.ndim != 1 \
            or t.numel() != max_size or not torch.equal(torch.sort(t.long()).values, torch.arange(max_size)):
        raise ValueError(f"the ranking of group {group!r} must be a permutation of range({max_size}) "
                         f"(its channels, most important first), got {str(order)[:80]}")
    return t.long().clone()


@dataclass
class DeployedSize:
    """The state one deployed size carries beside the shared weights (:meth:`ElasticNetwork.deploy`):
    every elastic group's size, and for each group below its full size a partition: ``kind``
    ``"partitions"``, a trainable one (points and mix, a few numbers); ``"scales"``, a
    :class:`~torchinn.elastic.scaled.ScaledPartition` (the ranked top-``k`` points, a trained scale
    per kept channel); ``"scales-bias"``, the scales and ``biases``: per bias tensor of a layer that
    reads a group below full size (by tensor name), a correction added to the sampled bias at this
    size (:mod:`torchinn.elastic.biases`; folded into the plain bias by :meth:`ElasticNetwork.to_discrete`);
    ``"scales-refit"``, the same, then the layers reading resized groups refit by least squares, each
    refit weight and bias kept in ``biases`` as its offset from the tensor sampled at this size
    (:mod:`torchinn.elastic.refit`): ``biases`` holds every per-size offset, by tensor name."""

    sizes: dict[str, int]
    partitions: dict[str, Partition]
    kind: str = "partitions"
    biases: dict[str, nn.Parameter] = field(default_factory=dict)


@dataclass
class SweepPoint:
    """One deployed size of :meth:`ElasticNetwork.sweep`."""

    target: float           # the fraction asked (of ``metric``)
    sizes: dict[str, int]
    params: int             # parameters of the discrete network
    quality: float | None   # ``evaluate(network)``, if given


class ElasticNetwork(nn.Module):
    """An :class:`~torchinn.IntegralModel` (``imodel``) whose ranked groups (``orders``: group ->
    channel indices, most important first) deploy the top channels at every size (see the
    module). It starts at full size; ``imodel`` is used, not copied."""

    def __init__(self, imodel: IntegralModel, orders: Mapping[str, Sequence[int] | Tensor]) -> None:
        super().__init__()
        if not isinstance(imodel, IntegralModel):
            raise TypeError(f"ElasticNetwork needs an IntegralModel (from torchinn.convert), got {type(imodel).__name__}")
        if not isinstance(orders, Mapping):
            raise TypeError(f"orders must be a mapping from group name to a ranking of its channels, got "
                            f"{type(orders).__name__}")
        self.imodel = imodel
        groups = imodel.groups
        self.orders: dict[str, Tensor] = {}
        for name, order in orders.items():
            g = groups[name]  # KeyError naming the close groups
            self.orders[g.name] = check_order(order, g.max_size, g.name)
        #: the resizable groups at full size (uniform partitions) and their quadratures
        self._uniform = {n: UniformPartition(p.max_size, p.quadrature)
                         for n, p in imodel.full_partitions().items()}
        self._elastic = [n for n, p in imodel.partition_map().items()
                         if p.resizable or n in self.orders]
        #: group -> ``[(ratio, error), ...]``: the error of the group alone at ``ratio`` of its
        #: channels (:meth:`measure_curves`); :meth:`resize` with ``target`` shares a budget by them
        self.curves: dict[str, list[tuple[float, float]]] = {}
        #: the smallest share of every group's channels the network was trained for (``None``: not said)
        self.low: float | None = None
        #: fraction of the parameters -> its own sizes and tuned partitions (:meth:`deploy`)
        self.deployed: dict[float, DeployedSize] = {}
        self.set_sizes({n: g.max_size for n, g in groups.items() if n in self._elastic})

    @property
    def elastic_groups(self) -> list[str]:
        """The groups that resize (ranked or uniform), in the integral model's order."""
        return list(self._elastic)

    # -- the protocol -------------------------------------------------------------------------
    def partition_map(self) -> dict[str, Partition]:
        """Every group's current partition (of the integral model)."""
        return self.imodel.partition_map()

    def sizes(self) -> dict[str, int]:
        return self.imodel.sizes()

    @property
    def groups(self) -> Any:
        return self.imodel.groups

    def partition(self, group: str, size: int) -> Partition:
        """The partition of ``group`` at ``size`` channels: its top ``size`` channels (ranked
        groups), the quadrature's uniform nodes otherwise; the full-size partition at full size."""
        full = self._uniform[group]
        if size >= full.max_size:
            return UniformPartition(full.max_size, full.quadrature)
        if group not in self.orders:
            return UniformPartition(full.max_size, full.quadrature, size)
        order = self.orders[group]
        scores = torch.empty(full.max_size, dtype=torch.float64)
        scores[order] = torch.arange(full.max_size, 0, -1, dtype=torch.float64)
        return start_partition(full, size, "activation", scores).requires_grad_(False)

    def kept_channels(self, sizes: Mapping[str, int]) -> dict[str, Tensor]:
        """Per ranked group of ``sizes`` below its full size, the channels its top ``k`` keep
        (sorted); groups at full size or without a ranking are left out."""
        return {g: torch.sort(self.orders[g][:k]).values for g, k in sizes.items()
                if k < self.groups[g].max_size and g in self.orders}

    def set_sizes(self, sizes: Mapping[str, int]) -> None:
        """Give the groups of ``sizes`` (group -> channels, checked by :meth:`resize`) their
        elastic partitions (and no deployed size's bias corrections)."""
        self._offsets({})
        for name, size in sizes.items():
            self.imodel.set_partition(name, self.partition(name, size))

    def resize(self, sizes: SizeSpec | None = None, *, multiple: Multiple = 1, target: float | None = None,
               metric: Metric = "params", example_inputs: Any = None, calibration: Iterable[Any] | None = None,
               method: str = "auto", min_ratio: float | None = None) -> dict[str, int]:
        """Deploy a size: ``sizes`` as :meth:`torchinn.IntegralModel.resize` takes them (one ratio
        of every resizable group's channels, a size, or group -> size or ratio; ``multiple``
        rounds them), or ``target``, the fraction of ``metric`` (``"params"``, ``"flops"``,
        ``"latency"``; the last two need ``example_inputs``) to keep, sizes chosen by
        :func:`torchinn.choose_sizes` among multiples of ``multiple``, no smaller than
        ``min_ratio`` of a group (default: the ``low`` the network was trained down to, else 0.1).
        ``method="auto"`` shares the budget by the network's own :attr:`curves` (measured by
        :func:`torchinn.make_elastic`: no data needed), or by one ratio for every group
        (``"uniform"``) where it has none; ``"sensitivity"``, ``"fisher"`` and ``"best"`` measure
        on ``calibration``. Returns every group's size."""
        if (sizes is None) == (target is None):
            raise ValueError("resize needs either sizes (a ratio, a size, or group -> size) or target "
                             f"(a fraction of the {metric} to keep), not {'both' if sizes is not None else 'neither'}")
        here = self._deployed_key(target) if metric == "params" and method == "auto" and min_ratio is None \
            and isinstance(multiple, int) and multiple == 1 else None
        if here is not None:
            d = self.deployed[here]
            for n, k in d.sizes.items():
                self.imodel.set_partition(n, d.partitions[n] if n in d.partitions else self.partition(n, k))
            self._offsets(d.biases)
            return self.sizes()
        if target is not None:
            if min_ratio is None:
                min_ratio = self.low if self.low is not None else 0.1
            self.set_sizes({n: self._uniform[n].max_size for n in self._elastic})
            curves = None
            if method == "auto":
                method = "sensitivity" if self.curves else "uniform"
                if self.curves:
                    curves = {n: self.curves.get(n, [(min_ratio, math.inf), (1.0, 0.0)]) for n in self.imodel.groups}
            planned = choose_sizes(self.imodel, target, metric, calibration=calibration, example_inputs=example_inputs,
                                   method=method, multiple=multiple, min_ratio=min_ratio, curves=curves)
            self.set_sizes({n: planned[n] for n in self._elastic})
            return self.sizes()
        current = self.imodel.sizes()
        parts = {n: (UniformPartition(p.max_size, p.quadrature, current[n]) if n in self._elastic else p)
                 for n, p in self.imodel.partition_map().items()}
        groups = self.imodel.groups
        plan = plan_sizes(parts, sizes, lambda name: groups[name].name, multiple)
        names = {id(p): n for n, p in parts.items()}
        self.set_sizes({names[id(p)]: size for p, size in plan})
        return self.sizes()

    def _offsets(self, biases: Mapping[str, nn.Parameter]) -> None:
        """The integral model's offsets: ``biases`` (tensor name -> correction; the same tensors)."""
        offsets = self.imodel.offsets
        if not biases and not len(offsets):
            return
        offsets.clear()
        for n, b in biases.items():
            offsets[module_key(n)] = b
        self.imodel.clear_samples()

    def _deployed_key(self, target: float | None) -> float | None:
        if target is None or isinstance(target, bool) or not isinstance(target, (int, float)):
            return None
        return next((t for t in self.deployed if abs(t - float(target)) <= 1e-9), None)

    def deploy(self, targets: Sequence[float], kind: str = "scales",
               sizes: Mapping[float, Mapping[str, int]] | None = None) -> dict[float, dict[str, int]]:
        """Give each fraction of ``targets`` (of the parameters, each in (0, 1)) its own sizes
        (chosen as ``resize(target=t)`` does now) and its own state per group below full size,
        kept in :attr:`deployed` (replacing earlier ones): ``kind="scales"`` (default), the ranked
        top-``k`` points (:meth:`partition`) with a trainable scale per kept channel
        (:class:`~torchinn.elastic.scaled.ScaledPartition`, starting at 1); ``"partitions"``, a
        trainable partition (points and mix) starting there; ``"scales-bias"`` and ``"scales-refit"``,
        the scales and per-size offsets (:class:`DeployedSize`). From then on ``resize(target=t)``
        (metric ``"params"``, no ``multiple``, ``method`` or ``min_ratio``) deploys that state;
        other sizes keep the ranked top-``k`` partitions. :func:`torchinn.make_elastic`
        (``deploy=``) trains it. ``sizes``: target -> the elastic groups' sizes at it, where chosen
        otherwise (:func:`torchinn.elastic.choose.choose_deployed_sizes`); a target it does not name
        gets ``resize(target=t)``'s. Returns target -> sizes; the network is left at full size."""
        if kind not in DEPLOY_KINDS:
            raise ValueError(f"deploy: kind must be one of {list(DEPLOY_KINDS)}, got {kind!r}")
        checked = []
        for t in targets:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
                raise ValueError(f"deploy: every target must be a fraction of the parameters in (0, 1), got {t!r}")
            checked.append(float(t))
        self.deployed = {}
        full = {n: self._uniform[n].max_size for n in self._elastic}
        given = {float(t): dict(s) for t, s in (sizes or {}).items()}
        for t, s in given.items():
            if set(s) != set(full) or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= full[n]
                                          for n, k in s.items()):
                raise ValueError(f"deploy: sizes[{t!r}] must give every elastic group ({sorted(full)}) an int in "
                                 f"[1, its channels], got {s!r}"[:400])
        for t in sorted(set(checked)):
            here = given.get(t) or {n: s for n, s in self.resize(target=t).items() if n in full}
            parts: dict[str, Partition] = {}
            for n, k in here.items():
                if k >= full[n]:
                    continue
                p = self.partition(n, k)
                if kind in ("scales", "scales-bias", "scales-refit"):
                    parts[n] = ScaledPartition(p).requires_grad_(True)
                elif p.quadrature.name != "gauss-legendre":
                    parts[n] = (p if isinstance(p, TrainablePartition) else TrainablePartition(p)).requires_grad_(True)
            self.deployed[t] = DeployedSize(here, parts, kind)
        self.set_sizes(full)
        return {t: dict(d.sizes) for t, d in self.deployed.items()}

    def active_deployed(self) -> float | None:
        """The deployed fraction whose sizes and partitions the network is at now, else ``None``."""
        current = self.imodel.partition_map()
        offsets = {k: id(b) for k, b in self.imodel.offsets.items()}
        for t, d in self.deployed.items():
            if all(current[n].size == k for n, k in d.sizes.items()) and \
                    all(current[n] is p for n, p in d.partitions.items()) and \
                    offsets == {module_key(n): id(b) for n, b in d.biases.items()}:
                return t
        return None

    def deployed_parameters(self) -> list[Tensor]:
        """The trainable tensors of every deployed size's partitions and bias corrections."""
        return [p for d in self.deployed.values() for part in d.partitions.values()
                for p in part.parameters() if p.requires_grad] + \
            [b for d in self.deployed.values() for b in d.biases.values() if b.requires_grad]

    def measure_curves(self, batches: Sequence[Any], reference: Sequence[Any], loss: Distillation,
                       ratios: Sequence[float] = (0.75, 0.5, 0.25)) -> dict[str, list[tuple[float, float]]]:
        """Measure and keep :attr:`curves`: every resizable group alone at each of ``ratios`` (and
        at :attr:`low`) of its channels, the others at full size, ``loss``'s error against
        ``reference`` (the original's outputs on ``batches``). The network is left at full size."""
        full = {n: self._uniform[n].max_size for n in self._elastic}
        ratios = sorted({*ratios, *([self.low] if self.low else [])}, reverse=True)
        curves = {}
        was = self.imodel.training
        self.imodel.eval()
        try:
            for n in self._elastic:
                m = full[n]
                curve = {1.0: 0.0}
                for r in ratios:
                    size = self._uniform[n].quadrature.nearest_size(max(1, round(r * m)), high=m)
                    if size >= m:
                        continue
                    self.set_sizes(dict(full, **{n: size}))
                    curve[size / m] = distill_error(self.imodel, batches, reference, loss)
                curves[n] = sorted(curve.items())
        finally:
            self.set_sizes(full)
            self.imodel.train(was)
        self.curves = curves
        return curves

    def to_discrete(self, graph: bool = False, *, calibration: Iterable[Any] | None = None) -> nn.Module:
        """The plain network at the current sizes (the user's class; ``graph=True``: the graph
        module). ``calibration``: where the network keeps batch-norm running statistics
        (converted with ``ConvertConfig(fuse_batch_norm=False)``), re-estimate them at these
        sizes on those batches first (:func:`torchinn.recalibrate_bn`, on a copy: the shared
        statistics stay as trained)."""
        if calibration is None or not self.imodel.norm_statistics():
            return self.imodel.to_discrete(graph=graph)
        model = copy.deepcopy(self.imodel)
        recalibrate_bn(model, calibration)
        return model.to_discrete(graph=graph)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.imodel(*args, **kwargs)

    def num_parameters(self, sizes: Mapping[str, int] | None = None) -> int:
        """Parameters of :meth:`to_discrete` at ``sizes`` (default: the current ones)."""
        return self.imodel.num_parameters(sizes)

    # -- many sizes ---------------------------------------------------------------------------
    def sweep(self, targets: Sequence[float] = (0.25, 0.4, 0.5, 0.6, 0.75, 1.0),
              evaluate: Callable[[nn.Module], float] | None = None, *, metric: Metric = "params",
              example_inputs: Any = None, multiple: Multiple = 1, pareto: bool = False,
              calibration: Iterable[Any] | None = None) -> list[SweepPoint]:
        """Deploy every fraction of ``targets`` (of ``metric``; 1.0: full size) and return its
        sizes, parameters and ``evaluate(plain_network)`` (higher is better; run without
        gradients), in the order of
        ``targets``; ``pareto=True`` keeps only the points no other beats on both parameters
        (fewer) and quality (higher). ``calibration`` re-estimates batch norms per size
        (:meth:`to_discrete`). The network is left at full size."""
        points = []
        full = {n: self._uniform[n].max_size for n in self._elastic}
        try:
            for t in targets:
                if t == 1.0:
                    self.set_sizes(full)
                else:
                    self.resize(target=t, metric=metric, example_inputs=example_inputs, multiple=multiple)
                net = self.to_discrete(calibration=calibration).eval()
                params = sum(p.numel() for p in net.parameters())
                with torch.no_grad():
                    quality = None if evaluate is None else float(evaluate(net))
                points.append(SweepPoint(float(t), self.sizes(), params, quality))
        finally:
            self.set_sizes(full)
        if pareto and evaluate is not None:
            points = [p for p in points if not any(
                (q.params <= p.params and q.quality > p.quality) or (q.params < p.params and q.quality >= p.quality)
                for q in points)]
        return points

    def extra_repr(self) -> str:
        return f"ranked groups={len(self.orders)} of {len(self._elastic)}"
