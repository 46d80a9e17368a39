"""Shared helpers and hypothesis strategies for the torchinn test suite."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st

import torchinn as inn

settings.register_profile("torchinn", deadline=None, derandomize=False, print_blob=True)
settings.load_profile("torchinn")

RULES = ("left", "right", "midpoint", "trapezoid", "simpson", "gauss-legendre")


@pytest.fixture(autouse=True)
def wall_clock_bounds(monkeypatch):
    """compress's own bound (``tune=False``) on wall time in every test: what a test asserts of the
    time (often on a fake ``time.perf_counter``) must not move with the load of the machine that
    runs it. tests/compression/test_clock.py tests the waits left out, on threads of its own."""
    from torchinn.compression import clock

    monkeypatch.setattr(clock, "TASKS", "/nonexistent/torchinn-test/task")


@st.composite
def gap_partitions(draw, min_points: int = 2, max_points: int = 16, odd: bool = False,
                   max_ratio: float = 20.0) -> torch.Tensor:
    """A random, non-uniform float64 partition of [0, 1] that contains 0 and 1.

    Neighbouring gaps differ by at most ``max_ratio`` (keeps high-order rules well conditioned).
    """
    n = draw(st.integers(min_points, max_points))
    if odd and n % 2 == 0:
        n = n + 1 if n < max_points else n - 1
    gaps = draw(st.lists(st.floats(1.0, max_ratio), min_size=n - 1, max_size=n - 1))
    g = torch.tensor(gaps, dtype=torch.float64)
    pts = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(g, 0) / g.sum()])
    pts[-1] = 1.0
    return pts


@st.composite
def polynomials(draw, degree: int) -> list[float]:
    """Coefficients ``c_0..c_degree`` in [-1, 1] (the leading one bounded away from 0)."""
    coeffs = draw(st.lists(st.floats(-1.0, 1.0), min_size=degree + 1, max_size=degree + 1))
    lead = draw(st.floats(0.25, 1.0)) * draw(st.sampled_from([-1.0, 1.0]))
    coeffs[-1] = lead
    return coeffs


def poly_eval(coeffs: list[float], x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    for c in reversed(coeffs):
        out = out * x + c
    return out


def poly_integral(coeffs: list[float]) -> float:
    """Exact integral over [0, 1]."""
    return sum(c / (k + 1) for k, c in enumerate(coeffs))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# -- zoo models, converted once per session --------------------------------------------------------

#: conversion without the channel permutation (fast; channel i of a group is channel i of the network)
FAST = inn.ConvertConfig(permute=False)
_CONVERTED: dict[tuple[str, str], tuple] = {}


def converted(name: str, config: inn.ConvertConfig = FAST) -> tuple:
    """(network, example inputs, integral model) of the zoo model ``name`` (built with seed 0),
    converted with ``config`` once per session; the integral model is a fresh copy at every call,
    so a test may resize or tune it. The network and inputs are shared: do not modify them. The
    caller's global RNG is left as it was."""
    from torchinn_demo.zoo import ZOO

    key = (name, repr(config))
    if key not in _CONVERTED:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, inputs = ZOO[name]()
            _CONVERTED[key] = (model, inputs, inn.convert(model, inputs, config))
    model, inputs, imodel = _CONVERTED[key]
    return model, inputs, copy.deepcopy(imodel)


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a test module (two OpenMP threads on a busy 2-core machine make every
    forward up to 100x slower; the distributed workers run with OMP_NUM_THREADS=1, so the same
    kernels round the same way). Use it with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class FakeClock:
    """time.perf_counter for a test: 1 ms a read, plus what the test adds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now
