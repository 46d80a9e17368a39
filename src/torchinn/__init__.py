"""torchinn: Integral Neural Networks for PyTorch.

Layers whose weights are continuous functions of their channel coordinates, sampled on partitions
of [0, 1] with numerical quadratures: train once, run at any width, and turn any size back into a
plain, smaller ``nn.Module``.
"""

from .functions import ContinuousFunction
from .model import to_discrete
from .convert import ConvertConfig, UnsupportedOpError, convert
from .graph import register_op
from .integral_model import Group, Groups, IntegralModel
from .serialize import FormatError, load, save
from .layers import (
    IntegralConv1d,
    IntegralConv2d,
    IntegralConv3d,
    IntegralConvTranspose1d,
    IntegralConvTranspose2d,
    IntegralConvTranspose3d,
    IntegralLayer,
    IntegralLinear,
    register_layer,
)
from .partition import (
    CompositePartition,
    FixedPartition,
    GaussLegendrePartition,
    Partition,
    TrainablePartition,
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
from .sizes import RandomSizes, partitions, resize

__version__ = "0.1.0"

__all__ = [
    "ContinuousFunction",
    "to_discrete",
    "convert",
    "ConvertConfig",
    "UnsupportedOpError",
    "register_op",
    "IntegralModel",
    "Group",
    "Groups",
    "save",
    "load",
    "FormatError",
    "IntegralLayer",
    "IntegralLinear",
    "IntegralConv1d",
    "IntegralConv2d",
    "IntegralConv3d",
    "IntegralConvTranspose1d",
    "IntegralConvTranspose2d",
    "IntegralConvTranspose3d",
    "register_layer",
    "Partition",
    "UniformPartition",
    "GaussLegendrePartition",
    "FixedPartition",
    "TrainablePartition",
    "CompositePartition",
    "RandomSizes",
    "partitions",
    "resize",
    "Quadrature",
    "LeftRiemann",
    "RightRiemann",
    "Midpoint",
    "Trapezoid",
    "Simpson",
    "GaussLegendre",
    "get_quadrature",
    "register_quadrature",
    "integrate",
]
