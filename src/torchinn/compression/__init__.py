"""Post-training compression: :func:`torchinn.compress` (:mod:`.pipeline`, its report in :mod:`.report`), what it chooses before
tuning (:mod:`.choices`, :mod:`.budget`, :mod:`.importance`, :mod:`.starts`), and the baselines on
the same groups and sizes (:mod:`.baselines`, with the least-squares refit of :mod:`.refit` and
:mod:`.regression`).
"""

from .baselines import prune, reconstruct, select_channels
from .budget import compare_sizes, choose_sizes
from .pipeline import CompressReport

__all__ = ["CompressReport", "choose_sizes", "compare_sizes", "prune", "reconstruct", "select_channels"]
