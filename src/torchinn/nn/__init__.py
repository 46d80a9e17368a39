"""Integral layers: fully connected and convolution layers (1-3d, transposed) with continuous weights.

Declare a network with them and :func:`torchinn.from_scratch` turns it into an
:class:`~torchinn.IntegralModel`; :mod:`.layers` has the details.
"""

from .layers import (
    IntegralConv1d,
    IntegralConv2d,
    IntegralConv3d,
    IntegralConvTranspose1d,
    IntegralConvTranspose2d,
    IntegralConvTranspose3d,
    IntegralLayer,
    IntegralLinear,
)

__all__ = ["IntegralLayer", "IntegralLinear", "IntegralConv1d", "IntegralConv2d", "IntegralConv3d",
           "IntegralConvTranspose1d", "IntegralConvTranspose2d", "IntegralConvTranspose3d"]
