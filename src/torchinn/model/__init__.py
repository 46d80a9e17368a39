"""The integral model: conversion of a trained network (:mod:`.convert`, :mod:`.permute`,
:mod:`.tsp`), the :class:`IntegralModel` it gives (:mod:`.integral_model`), networks built from
scratch (:mod:`.scratch`), the protocol and size rules both follow (:mod:`.protocol`,
:mod:`.network`), their inputs (:mod:`.inputs`) and batch norms (:mod:`.norms`).
"""

from .groups import Group, Groups
from .integral_model import IntegralModel
from .network import integral_network, partitions, resize, to_discrete
from .protocol import IntegralNetwork
from .scratch import from_scratch

__all__ = ["IntegralModel", "Group", "Groups", "IntegralNetwork", "from_scratch",
           "integral_network", "partitions", "resize", "to_discrete"]
