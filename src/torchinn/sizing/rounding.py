"""Channel counts rounded to multiples (of 8 or 16: the sizes fast kernels want).

With a *multiple* ``m``, a group of ``max_size`` channels may take the sizes ``m, 2m, 3m, ...`` up
to ``max_size``, and its full size ``max_size`` itself (which need not be a multiple: a group is
never made larger than it is, and one with fewer than ``m`` channels keeps them all). Of those,
only the sizes the group's quadrature allows are taken (Simpson's rule: odd sizes; with an even
multiple that leaves the full size alone). ``m = 1`` allows every size, as without rounding.

``multiple`` is given as one int for every group, or a mapping from group name (or the name of
the module that produces the group) to an int; groups not in the mapping get 1. It is taken by
:func:`torchinn.resize` (and every ``resize`` method), :func:`torchinn.choose_sizes` (which
searches over the allowed sizes only) and :func:`torchinn.compress`.

>>> round_size(50, 100, 8), round_size(99, 100, 8), round_size(3, 100, 8), round_size(5, 6, 8)
(48, 100, 8, 6)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping

from ..options import unknown_group

__all__ = ["Multiple", "ceil_size", "check_multiple", "floor_size", "resolve_multiple", "round_size"]

#: what ``multiple`` takes: one int for every group, or one per group name
Multiple = int | Mapping[str, int]

Allows = Callable[[int], bool] | None


def check_multiple(value: object, what: str = "multiple") -> int:
    """``value`` as an int if it is an integer >= 1 (not a bool; a NumPy integer is fine), else
    ``ValueError`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be an int >= 1 (channel counts are rounded to multiples of it; "
                         f"1: no rounding), got {value!r}")
    return int(value)


def resolve_multiple(multiple: object, names: list[str], find: Callable[[str], str] | None = None) -> dict[str, int]:
    """Every group's multiple (group name -> int) from ``multiple`` (one int, or a mapping from a
    name that ``find`` maps to a group name to an int; default: exact names). An unknown name or
    a bad value raises ``ValueError``."""
    if not isinstance(multiple, Mapping):
        m = check_multiple(multiple)
        return {n: m for n in names}
    out = {n: 1 for n in names}
    for key, value in multiple.items():
        try:
            group = find(key) if find is not None else key
        except KeyError as err:
            raise ValueError(f"multiple: {err.args[0]}") from None
        if group not in out:
            raise ValueError(f"multiple: {unknown_group(key, names).args[0]}")
        out[group] = check_multiple(value, f"multiple for group {group!r}")
    return out


def floor_size(size: int, max_size: int, multiple: int, allows: Allows = None) -> int | None:
    """The largest allowed size <= ``size`` (``None`` if there is none)."""
    if size >= max_size:
        return max_size
    k = size // multiple * multiple
    while k >= multiple and allows is not None and not allows(k):
        k -= multiple
    return k if k >= 1 else None


def ceil_size(size: int, max_size: int, multiple: int, allows: Allows = None) -> int:
    """The smallest allowed size >= ``size`` (the full size if no multiple below it is allowed)."""
    k = max(multiple, -(-size // multiple) * multiple)
    while k < max_size and allows is not None and not allows(k):
        k += multiple
    return min(k, max_size)


def round_size(size: int, max_size: int, multiple: int, allows: Allows = None) -> int:
    """The allowed size nearest to ``size`` (ties: the larger); ``allows`` is the quadrature's
    test of a size (``None``: every size)."""
    lo, hi = floor_size(size, max_size, multiple, allows), ceil_size(size, max_size, multiple, allows)
    if lo is None or hi - size <= size - lo:
        return hi
    return lo
