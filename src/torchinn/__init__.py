"""torchinn: Integral Neural Networks for PyTorch.

Layers whose weights are continuous functions of their channel coordinates, sampled on partitions
of [0, 1] with numerical quadratures: train once, run at any width, and turn any size back into a
plain, smaller ``nn.Module``.
"""

from .maths.functions import ContinuousFunction
from .model.convert import ConvertConfig, UnsupportedOpError, convert
from .graph import register_op
from .model.integral_model import Group, Groups, IntegralModel
from .io.format import FormatError, load, save
from .compression.baselines import prune, reconstruct
from .compression.budget import choose_sizes
from .compression.pipeline import CompressReport, compress
from .training.train import TuneConfig, finetune, make_grid_trainable, sandwich_backward, tune_grid
from .nn.layers import (
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
from .maths.partition import (
    CompositePartition,
    FixedPartition,
    GaussLegendrePartition,
    Partition,
    TrainablePartition,
    UniformPartition,
)
from .maths.quadrature import (
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
from .model.network import integral_network, partitions, resize, to_discrete
from .model.protocol import IntegralNetwork
from .model.scratch import ScratchNetwork, from_scratch
from .model.norms import recalibrate_bn
from .sizing.sizes import RandomSizes

__version__ = "0.1.0"

__all__ = [
    # post-training compression
    "compress",
    "CompressReport",
    "choose_sizes",
    "TuneConfig",
    "tune_grid",
    "make_grid_trainable",
    "finetune",
    "prune",
    "reconstruct",
    # the integral network
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
    "IntegralNetwork",
    "ScratchNetwork",
    "from_scratch",
    "recalibrate_bn",
    "integral_network",
    "RandomSizes",
    "sandwich_backward",
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
