"""Checks of the options the public functions and config classes take: one of a few names, a
finite number in a range, names of the model's parts. Each raises a ``ValueError`` (a
``TypeError`` for a value of the wrong type) that names the option, the allowed values and what
it got, with the closest allowed names for a typo.

>>> check_choice("klx", ("auto", "mse", "kl"), "loss")
Traceback (most recent call last):
...
ValueError: loss must be 'auto', 'mse' or 'kl', got 'klx'; did you mean 'kl'?
>>> check_number(float("nan"), "min_ratio", 0, 1, low_open=True)
Traceback (most recent call last):
...
ValueError: min_ratio must be a finite number in (0, 1], got nan
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Collection, Iterable

from torch import Tensor, nn

__all__ = ["check_choice", "check_module_names", "check_names", "check_number", "close_hint", "spell", "unknown_group"]


def spell(allowed: Iterable[object]) -> str:
    """``'a', 'b' or 'c'`` (``one of [...]`` for more than four values)."""
    values = list(allowed)
    if len(values) > 4:
        return f"one of {values}"
    words = [repr(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def close_hint(name: object, known: Iterable[str], n: int = 1) -> str:
    """``"; did you mean 'x'?"`` with the closest of ``known`` (``n`` of them), or ``""``."""
    close = difflib.get_close_matches(str(name), [k for k in known if isinstance(k, str)], n=n, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {close[0]!r}?" if n == 1 else f"; did you mean {close}?"


def unknown_group(name: object, known: Iterable[str]) -> KeyError:
    """The error for a group name that is not there, with the closest names or a few known ones."""
    known = list(known)
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    if close:
        hint = f"; did you mean {close}?"
    else:
        hint = f"; known groups: {known[:8]}" + ("..." if len(known) > 8 else "")
    return KeyError(f"no group named {name!r}{hint}")


def check_choice(value: object, allowed: Collection[object], what: str) -> object:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` naming them."""
    if isinstance(value, str) or value is None:
        if value in allowed:
            return value
    elif any(value is a for a in allowed):
        return value
    hint = close_hint(value, [a for a in allowed if isinstance(a, str)]) if isinstance(value, str) else ""
    raise ValueError(f"{what} must be {spell(allowed)}, got {value!r}{hint}")


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def check_number(value: object, what: str, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> float:
    """``value`` as a finite float (an int with ``integer``) within ``[low, high]`` (an end is
    left out with ``low_open`` / ``high_open``; ``None``: unbounded). NaN, infinities, bools and
    values outside get a ``ValueError`` naming ``what`` and the range (``x must be in (0, 1), got
    1.5``; ``x must be a finite number in (0, 1), got nan`` for a value that is not one).

    >>> check_number(1.5, "target", 0, 1, low_open=True, high_open=True)
    Traceback (most recent call last):
    ...
    ValueError: target must be in (0, 1), got 1.5
    """
    rng = _range(low, high, low_open, high_open)
    kind = "an int" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{what} must be {kind}{' ' + rng if rng else ''}, got {value!r}")
    x = int(value) if integer else float(value)
    if (low is not None and (x < low or (low_open and x == low))) or \
            (high is not None and (x > high or (high_open and x == high))):
        raise ValueError(f"{what} must be {rng}, got {value!r}")
    return x


def check_names(names: Iterable[str], known: Collection[str], what: str, kinds: str) -> None:
    """Every one of ``names`` must be in ``known`` (``kinds`` says what they are, e.g.
    ``"module, parameter or buffer of Net"``); the first that is not gets a ``ValueError`` with
    the closest known names, or a few of them."""
    for name in names:
        if name in known:
            continue
        hint = close_hint(name, known, n=3)
        if not hint:
            few = sorted(known)[:8]
            hint = f"; its names include {few}{'...' if len(known) > 8 else ''}"
        raise ValueError(f"{what}: {name!r} is not the name of a {kinds}{hint}")


def check_module_names(model: nn.Module, names: Iterable[str], what: str, extra: Iterable[str] = ()) -> None:
    """Every one of ``names`` names a submodule, parameter, buffer or tensor attribute of
    ``model``, or is one of ``extra`` (the traced graph's tensor names: a constant made in
    ``forward`` has one): a typo in ``ConvertConfig.keep_discrete`` would otherwise keep
    nothing, silently."""
    names = list(names)
    if not names:
        return
    known = set(extra)
    for prefix, mod in model.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        known.add(prefix)
        known.update(dot + k for k, v in vars(mod).items() if isinstance(v, Tensor))
        known.update(dot + k for k in (*mod._parameters, *mod._buffers))
    known.discard("")
    check_names(names, known, what, f"module, parameter or buffer of {type(model).__name__}")
