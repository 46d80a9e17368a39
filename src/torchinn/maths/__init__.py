"""The maths of integral networks: continuous weight functions, partitions of [0, 1] and quadratures.

:mod:`.functions` (cubic interpolation of control values), :mod:`.partition` (where a group's
functions are sampled), :mod:`.quadrature` (how the samples are weighted), :mod:`.structured` (a
tensor as continuous functions of its channel groups).
"""

from .functions import ContinuousFunction
from .trainable import TrainablePartition
from .partition import (
    CompositePartition,
    FixedPartition,
    GaussLegendrePartition,
    Partition,
    UniformPartition,
)
from .quadrature import (
    GaussLegendre,
    LeftRiemann,
    Midpoint,
    Quadrature,
    RightRiemann,
    Simpson,
    Trapezoid,
    get_quadrature,
    integrate,
    register_quadrature,
)

__all__ = [
    "ContinuousFunction",
    "Partition", "UniformPartition", "GaussLegendrePartition", "FixedPartition", "TrainablePartition",
    "CompositePartition",
    "Quadrature", "LeftRiemann", "RightRiemann", "Midpoint", "Trapezoid", "Simpson", "GaussLegendre",
    "get_quadrature", "register_quadrature", "integrate",
]
