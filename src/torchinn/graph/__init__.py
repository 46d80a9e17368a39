"""Tracing a network and finding its channel groups (see :mod:`.analysis`)."""

from .analysis import OPS, register_op

__all__ = ["OPS", "register_op"]
