"""torchinn: Integral Neural Networks for PyTorch.

Layers whose weights are continuous functions of their channel coordinates, sampled on partitions
of [0, 1] with numerical quadratures: train once, run at any width, and turn any size back into a
plain, smaller ``nn.Module``.

The top level holds what a user calls; the rest lives in sub-packages (``docs/architecture.md``):
:mod:`torchinn.maths` (continuous functions, partitions, quadratures), :mod:`torchinn.nn` (the
``Integral*`` layers), :mod:`torchinn.graph` (tracing, channel groups, op handlers),
:mod:`torchinn.model` (the integral model, conversion, resizing), :mod:`torchinn.discrete` (the
user's class back), :mod:`torchinn.sizing` (rounding, FLOPs and latency),
:mod:`torchinn.compression` (``compress`` and the baselines), :mod:`torchinn.elastic` (one network for every size), :mod:`torchinn.training` (random sizes, tuning,
fine-tuning, distillation), :mod:`torchinn.io` (the ``.inn`` format) and :mod:`torchinn.cli`.
"""

from . import compression
from . import discrete
from . import elastic
from . import graph
from . import io
from . import maths
from . import model
from . import nn
from . import sizing
from . import training
from .compression.baselines import prune
from .compression.budget import choose_sizes
from .compression.pipeline import CompressReport, compress
from .elastic.train import make_elastic
from .graph import register_op
from .io.format import FormatError, load, save
from .model.convert import ConvertConfig, UnsupportedOpError, convert
from .model.integral_model import IntegralModel
from .model.network import resize, to_discrete
from .model.norms import recalibrate_bn
from .model.scratch import from_scratch
from .training.sizes import RandomSizes
from .training.train import TuneConfig, finetune, sandwich_backward, tune_grid

__version__ = "0.1.0"

__all__ = [
    # make an integral network
    "convert",
    "ConvertConfig",
    "UnsupportedOpError",
    "register_op",
    "from_scratch",
    "IntegralModel",
    # use it at any size
    "resize",
    "to_discrete",
    "RandomSizes",
    "sandwich_backward",
    "recalibrate_bn",
    # post-training compression
    "compress",
    "CompressReport",
    "choose_sizes",
    "TuneConfig",
    "tune_grid",
    "finetune",
    "prune",
    # one network for every size
    "make_elastic",
    # files
    "save",
    "load",
    "FormatError",
]
