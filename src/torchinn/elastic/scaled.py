"""A partition with a trained scale per point: :class:`ScaledPartition`, the state of a deployed
size of kind ``"scales"`` (:meth:`torchinn.elastic.ElasticNetwork.deploy`).

The points are those of ``base`` (the ranked top-``k`` channels of an elastic network, kept
fixed) and each point's quadrature weight is multiplied by ``exp(log_scale)``: a per-size scale
of what each kept channel feeds the next layer (as slimmable networks give each width its own
batch norms). The scales start at 1 (``log_scale`` 0: the ``base`` partition exactly) and fold
into the plain weights of :meth:`~torchinn.IntegralModel.to_discrete` as any quadrature weight.

>>> import torch
>>> from torchinn.maths import UniformPartition
>>> p = ScaledPartition(UniformPartition(8, size=4))
>>> torch.equal(p.weights(), UniformPartition(8, size=4).weights())
True
>>> with torch.no_grad():
...     _ = p.log_scale.fill_(torch.log(torch.tensor(2.0)))
>>> torch.allclose(p.weights(), 2 * UniformPartition(8, size=4).weights())
True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..maths.partition import CompositePartition, Device, Partition

__all__ = ["ScaledPartition"]


class ScaledPartition(Partition):
    """The points of ``base`` (not trained) with a trained scale per point (``log_scale``, one
    per point, from 0: the weights of ``base`` at first)."""

    def __init__(self, base: Partition) -> None:
        if not isinstance(base, Partition) or isinstance(base, (CompositePartition, ScaledPartition)):
            raise TypeError(f"ScaledPartition needs a plain partition of one group (not composite or already "
                            f"scaled), got {type(base).__name__}")
        super().__init__(base.max_size, base.quadrature)
        self.base = base.requires_grad_(False)
        like = next((t for t in base.parameters()), None)
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype()
        self.log_scale = nn.Parameter(torch.zeros(base.size, dtype=dtype))

    @property
    def size(self) -> int:
        return self.base.size

    def points(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        return self.base.points(device, dtype)

    def weights(self, device: Device = None, dtype: torch.dtype | None = None) -> Tensor:
        w = self.base.weights(device, dtype)
        return w * torch.exp(self.log_scale.to(device=w.device, dtype=w.dtype))

    def scales(self) -> Tensor:
        """The scale of every point (``exp(log_scale)``)."""
        return torch.exp(self.log_scale)

    def cache_key(self) -> tuple:
        return self.base.cache_key() + (self.log_scale._version, self.log_scale.data_ptr())

    def points_key(self) -> tuple:
        """The points are those of ``base``: the scales change only the weights."""
        return self.base.cache_key()

    def requires_grad_(self, requires_grad: bool = True) -> ScaledPartition:
        """Train (or not) the scales; the points of ``base`` stay fixed."""
        self.log_scale.requires_grad_(requires_grad)
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + ", scaled"
