"""A probe, not a torchinn feature: the per-size *scale* design of issue 24 (2026-12-07).

``benchmarks/elastic.py``'s ``partitions-frozen`` design (shared weights frozen, each deployed size
trains its own state) with partitions whose points stay at the ranked top-``k`` channels and
which carry a trained scale per kept channel instead (``log_scale``, multiplying the quadrature
weights: a per-size, per-channel scale of what each kept channel feeds the next layer, as
slimmable networks' private batch norms give each width). Installed by replacing
``ElasticNetwork.deploy`` in this process. These partitions cannot be saved (``torchinn.save``
would store them without their scales). Built into torchinn since (``make_elastic(deploy=...)``,
``deploy_kind="scales"``, the default: :class:`torchinn.elastic.ScaledPartition`, saved and
checked; ``benchmarks/elastic.py --designs scales``); this probe is kept to reproduce its runs.

    cd benchmarks && python elastic_scales_probe.py --network waifu2x_photo --seconds 200 --threads 1 \
        --designs partitions-frozen --partition-lr 1e-2 --reuse-compress elastic_runs/waifu2x_photo_300s.json
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor, nn

import elastic as bench  # benchmarks/elastic.py (run from benchmarks/)
from torchinn.elastic.network import ElasticNetwork
from torchinn.maths.trainable import TrainablePartition


class Scaled(TrainablePartition):
    """The points of ``base`` (frozen) and a trained scale per point (``log_scale``, from 0)."""

    def __init__(self, base: TrainablePartition) -> None:
        super().__init__(base.points(dtype=torch.float64).detach(), base.quadrature, base.max_size,
                         mix=float(base.mix.detach()))
        with torch.no_grad():
            self.delta.copy_(base.delta)
            self._free.copy_(base._free)
        self.delta.requires_grad_(False)
        self.log_scale = nn.Parameter(torch.zeros(base.size))

    def requires_grad_(self, requires_grad: bool = True) -> Scaled:
        self.log_scale.requires_grad_(requires_grad)
        return self

    def weights(self, device: Any = None, dtype: torch.dtype | None = None) -> Tensor:
        w = super().weights(device, dtype)
        return w * torch.exp(self.log_scale).to(w.dtype)

    def cache_key(self) -> tuple:
        return super().cache_key() + (self.log_scale._version,)


_deploy = ElasticNetwork.deploy


def deploy(self: ElasticNetwork, targets: Any, kind: str = "partitions") -> dict:
    out = _deploy(self, targets, "partitions")
    for d in self.deployed.values():
        d.partitions = {n: Scaled(p) for n, p in d.partitions.items()}
    return out


if __name__ == "__main__":
    ElasticNetwork.deploy = deploy
    bench.main(sys.argv[1:])
