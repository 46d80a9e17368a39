"""What elastic training measures and keeps (:func:`torchinn.make_elastic`, :mod:`.train`): the
held-out errors of sizes, the full size's change against the original, the scores the guard
compares, the tensors of a deployed size and of a kept state, and the weight of the full size's
loss in a sandwich step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from ..compression.starts import distill_error
from ..model.inputs import run
from ..model.integral_model import IntegralModel
from ..training.distill import Distillation
from .network import ElasticNetwork

__all__: list[str] = []

_FULL_METRIC = {"kl": "share of samples whose top class differs from the original's",
                "mse": "relative squared error against the original",
                "mse-channels": "relative squared error against the original"}



def _full_change(imodel: IntegralModel, batches: list, reference: list, loss: Distillation) -> float:
    """How far the network (at its current sizes) is from the original on ``batches``: for class
    logits (``loss`` KL), the share of samples whose top class differs; else the relative squared
    error (``"mse"``'s :meth:`~torchinn.training.distill.Distillation.error`)."""
    if loss.kind != "kl":
        return distill_error(imodel, batches, reference, "mse")
    differ, total = 0, 0
    with torch.no_grad():
        for b, ref in zip(batches, reference):
            for o, r in zip(_leaves(run(imodel, b)), _leaves(ref)):
                differ += int((o.argmax(-1) != r.argmax(-1)).sum())
                total += r.argmax(-1).numel()
    return differ / max(1, total)


def _leaves(out: Any) -> list[Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, Tensor) and t.is_floating_point()]


def _errors(elastic: ElasticNetwork, ratios: Sequence[float], batches: list, reference: list,
            loss: Distillation, deployed: bool = False) -> tuple[dict[float, tuple[int, float]], float]:
    """Per ratio of every group's channels (``deployed``: per deployed fraction of the parameters,
    at its own sizes and partitions), (parameters, ``loss``'s error); and the full size's
    :func:`_full_change`. The network is left at full size."""
    out = {}
    was = elastic.imodel.training
    elastic.imodel.eval()
    try:
        for r in ratios:
            if deployed:
                elastic.resize(target=r)
            else:
                elastic.resize(r)
            with torch.no_grad():
                out[r] = (elastic.num_parameters(), distill_error(elastic.imodel, batches, reference, loss))
        elastic.resize(1.0)
        full = _full_change(elastic.imodel, batches, reference, loss)
    finally:
        elastic.resize(1.0)
        elastic.imodel.train(was)
    return out, full


def _score(errors: Mapping[float, tuple[int, float]]) -> float:
    """The geometric mean of the errors below full size (each size counts alike)."""
    logs = [math.log(max(e, 1e-30)) for r, (_, e) in errors.items() if r < 1.0]
    return sum(logs) / max(1, len(logs))


def _total(errors: Mapping[float, tuple[int, float]]) -> float:
    """The sum of the errors of the deployed sizes (a geometric mean would let a size whose error is
    near 0, as a deployed 75% of a classifier's parameters at 2e-10, outweigh all the others)."""
    return sum(e for _, e in errors.values())


def _own(elastic: ElasticNetwork, target: float) -> list[Tensor]:
    """The trainable tensors of one deployed size's partitions and bias corrections."""
    d = elastic.deployed[target]
    return [q for p in d.partitions.values() for q in p.parameters() if q.requires_grad] + \
        [b for b in d.biases.values() if b.requires_grad]




def _state(imodel: IntegralModel, extra: Sequence[Tensor] = ()) -> tuple[dict[str, Tensor], list[Tensor]]:
    """The shared weights (not the partitions) and copies of ``extra`` (the deployed partitions' tensors)."""
    return ({k: v.detach().clone() for k, v in imodel.state_dict().items() if not k.startswith(("partitions.", "offsets."))},
            [t.detach().clone() for t in extra])


class _FullWeight:
    """The loss of each pass of a sandwich step, the first (full size) weighted by ``weight``: a
    penalty on the full-size error, 4 at first, that grows fourfold while its held-out error is
    above half the tolerance and halves (down to 1) while it is below a tenth of it (:meth:`update`)."""

    def __init__(self, dist: Distillation) -> None:
        self.dist, self.weight, self.calls = dist, 4.0, 0
        self.batch: Any = None
        self.ref: Any = None

    def start(self, batch: Any, ref: Any) -> None:
        self.batch, self.ref, self.calls = batch, ref, 0

    def __call__(self, output: Any) -> Tensor:
        self.calls += 1
        loss = self.dist(output, self.batch, self.ref)
        return loss * self.weight if self.calls == 1 else loss

    def update(self, full_error: float, tolerance: float) -> None:
        if full_error > 0.5 * tolerance:
            self.weight = min(self.weight * 4.0, 1e6)
        elif full_error < 0.1 * tolerance:
            self.weight = max(self.weight / 2.0, 1.0)
