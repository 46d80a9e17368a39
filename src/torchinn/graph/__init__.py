"""Tracing a network and finding its channel groups (see :mod:`.analysis`).

Importing this package registers the built-in op handlers (:mod:`.ops`), so a handler registered
later with :func:`register_op` is the one used. What an op is for the code that acts on layers
(a linear layer, a convolution, a view, a batch norm) is in the table of :mod:`.kinds`
(:class:`Kind`), which ``register_op(..., kind=...)`` extends.
"""

from . import ops  # noqa: F401 - register the built-in handlers
from .kinds import KINDS, Kind
from .registry import OPS, register_op

__all__ = ["KINDS", "Kind", "OPS", "register_op"]
