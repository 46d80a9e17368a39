"""Sizes: channel counts rounded to multiples (:mod:`.rounding`) and what a budget counts of a
plain network (:mod:`.metrics`). Random sizes for training are :class:`torchinn.RandomSizes`
(:mod:`torchinn.training.sizes`).
"""

from .metrics import count_flops, measure_latency

__all__ = ["count_flops", "measure_latency"]
