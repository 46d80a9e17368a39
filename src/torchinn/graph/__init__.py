"""Tracing a network and finding its channel groups (see :mod:`.analysis`).

Importing this package registers the built-in op handlers (:mod:`.ops`), so a handler registered
later with :func:`register_op` is the one used.
"""

from . import ops  # noqa: F401 - register the built-in handlers
from .registry import OPS, register_op

__all__ = ["OPS", "register_op"]
