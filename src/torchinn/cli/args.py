"""The command line's argument types: each parses one option's text and checks its range.

A bad value raises ``argparse.ArgumentTypeError``, which argparse prints as one line naming the
option (``torchinn compress: error: argument --std: ...``) and exits with status 2. Every float is
finite; counts and seeds are bounded where the libraries below them would fail (a seed above
``MAX_SEED`` overflows torch's and scikit-learn's seeds; thousands of threads crash OpenMP).

>>> std_values("0.229,0.224,0.225")
(0.229, 0.224, 0.225)
>>> std_values("inf")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: every std must be a finite number > 0 (the images are divided by it), got 'inf'
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

__all__ = ["MAX_SEED", "available_cores", "max_threads", "widths", "positive", "multiple", "shape", "fraction",
           "levels", "seconds", "token_shape", "non_negative_seconds", "share", "mean_values", "std_values", "seed", "threads"]

#: the largest --seed: numpy / scikit-learn seeds (the demo) are 32-bit unsigned
MAX_SEED = 2**32 - 1


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def max_threads() -> int:
    """The largest --threads: 4 x the machine's logical CPUs (far more threads only thrash, and
    OpenMP crashes long before 100,000)."""
    return 4 * (os.cpu_count() or 1)


def widths(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated fractions like 1,0.5; got {text!r}")
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"every width must be a fraction in (0, 1]; got {text!r}")
    return values


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def multiple(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the multiple is a whole number of channels >= 1 like 8, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"the multiple must be >= 1 (1: no rounding), got {value}")
    return value


def shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is comma-separated positive integers like 1,3,224,224; got {text!r}")
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"every dimension must be a positive integer; got {text!r}")
    return dims


def token_shape(text: str) -> tuple[int, int]:
    """--input-ids: ``N,L``, a batch of N sequences of L token ids."""
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-ids is N,L: N sequences of L tokens, like 4,128; got {text!r}")
    if len(dims) != 2 or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"--input-ids is two positive integers N,L (N sequences of L tokens), "
                                         f"like 4,128; got {text!r}")
    return dims


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) like 0.5, got {text!r}")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"the target is the fraction of the metric to keep and must be "
                                         f"in (0, 1), got {value}")
    return value


def levels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be comma-separated fractions like 0.25,0.5; got {text!r}")
    if not values or any(not 0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"every level is a fraction removed, in (0, 1); got {text!r}")
    return values


def kept_fractions(text: str) -> tuple[float, ...]:
    """--deploy: fractions of the parameters kept, like 0.25,0.5,0.75."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--deploy is comma-separated fractions of the parameters kept, like "
                                         f"0.25,0.5,0.75; got {text!r}")
    if not values or any(not 0.0 < v < 1.0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"every --deploy fraction is a share of the parameters kept, in (0, 1), "
                                         f"each once; got {text!r}")
    return values


def _float(text: str, ok: Callable[[float], bool], expected: str, rule: str) -> float:
    """``text`` as a finite float meeting ``ok``; argparse errors say ``expected`` / ``rule``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"{rule}, got {text}")
    return value


def seconds(text: str) -> float:
    return _float(text, lambda v: v > 0, "a number of seconds", "seconds must be > 0")


def non_negative_seconds(text: str) -> float:
    return _float(text, lambda v: v >= 0, "a number of seconds", "seconds must be >= 0")


def tune_share(text: str) -> float:
    """--tune-share: the share of the training budget after the per-size refit, in [0, 1)."""
    return _float(text, lambda v: 0.0 <= v < 1.0, "a share in [0, 1) like 0.7", "--tune-share must be in [0, 1)")


def refit_share(text: str) -> float:
    """--refit-share: the most of the time left after the shared training the refits take, in (0, 1]."""
    return _float(text, lambda v: 0.0 < v <= 1.0, "a share in (0, 1] like 0.9", "--refit-share must be in (0, 1]")


def share(text: str) -> float:
    return _float(text, lambda v: 0.0 <= v <= 1.0, "a share in [0, 1]", "the share must be in [0, 1]")


def _floats(text: str, ok: Callable[[float], bool], rule: str, example: str) -> tuple[float, ...]:
    """Comma-separated finite floats, each meeting ``ok`` (``rule`` says how)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like {example}; got {text!r}")
    if not all(math.isfinite(v) and ok(v) for v in values):
        raise argparse.ArgumentTypeError(f"{rule}, got {text!r}")
    return values


def mean_values(text: str) -> tuple[float, ...]:
    """--mean: finite numbers (an infinite or NaN mean makes every calibration input non-finite)."""
    return _floats(text, lambda v: True, "every mean must be a finite number", "0.485,0.456,0.406")


def std_values(text: str) -> tuple[float, ...]:
    """--std: finite numbers > 0 (an infinite std makes every calibration input 0)."""
    return _floats(text, lambda v: v > 0, "every std must be a finite number > 0 (the images are divided by it)",
                   "0.229,0.224,0.225")


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a whole number in [0, {MAX_SEED}], got {text!r}")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, {MAX_SEED}], got {value}")
    return value


def threads(text: str) -> int:
    top = max_threads()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of threads in [1, {top}], got {text!r}")
    if not 1 <= value <= top:
        raise argparse.ArgumentTypeError(f"the number of threads must be in [1, {top}] (4 x the "
                                         f"{os.cpu_count() or 1} logical CPUs of this machine), got {value}")
    return value
