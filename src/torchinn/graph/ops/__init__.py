"""The built-in op handlers: what each ATen operation does to channel axes.

:mod:`.core` holds the helpers and the pointwise, reduction and normalisation handlers,
:mod:`.linear` the linear maps (linear, convolutions, matmul), :mod:`.shape` the shape
operations (views, permutations, cat/stack), :mod:`.slicing` split, slicing and indexing.
Importing this package registers them.
"""

from . import core, linear, shape, slicing  # noqa: F401 - register the built-in handlers

__all__ = ["core", "linear", "shape", "slicing"]
