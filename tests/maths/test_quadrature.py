"""Quadrature rules: exactness, convergence order, Appendix B weights, dtype/device, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RULES, gap_partitions, poly_eval, poly_integral, polynomials
from torchinn.maths.quadrature import (
    QUADRATURES,
    GaussLegendre,
    LeftRiemann,
    Midpoint,
    RightRiemann,
    Simpson,
    Trapezoid,
    get_quadrature,
    integrate,
)

F64 = torch.float64


def quad(rule, points, f):
    q = get_quadrature(rule).weights(points)
    return float((q * f(points)).sum())


# -- exactness -----------------------------------------------------------------------------------

@settings(max_examples=60)
@given(pts=gap_partitions(min_points=2, max_points=20), coeffs=polynomials(1))
def test_trapezoid_exact_degree1_nonuniform(pts, coeffs):
    got = quad("trapezoid", pts, lambda x: poly_eval(coeffs, x))
    assert got == pytest.approx(poly_integral(coeffs), abs=1e-13)


@settings(max_examples=30)
@given(pts=gap_partitions(min_points=3, max_points=20))
def test_trapezoid_not_exact_degree2_nonuniform(pts):
    # error of the trapezoid rule on x^2 is sum(dx^3) / 6 > 0: never exact
    got = quad("trapezoid", pts, lambda x: x**2)
    expected_err = float((torch.diff(pts) ** 3).sum() / 6)
    assert got - 1 / 3 == pytest.approx(expected_err, rel=1e-9)
    assert expected_err > 1e-6


@pytest.mark.parametrize("n", [3, 5, 7, 11, 21])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_simpson_exact_degree3_uniform(n, degree):
    x = torch.linspace(0, 1, n, dtype=F64)
    assert quad("simpson", x, lambda t: t**degree) == pytest.approx(1 / (degree + 1), abs=1e-14)


@pytest.mark.parametrize("n", [3, 5, 9])
def test_simpson_not_exact_degree4_uniform(n):
    x = torch.linspace(0, 1, n, dtype=F64)
    h = 1 / (n - 1)
    # composite Simpson error for x^4 is h^4 / 180 * (f''''=24) * (b - a)
    assert quad("simpson", x, lambda t: t**4) - 0.2 == pytest.approx(h**4 * 24 / 180, rel=1e-9)


@settings(max_examples=60)
@given(pts=gap_partitions(min_points=3, max_points=21, odd=True), coeffs=polynomials(2))
def test_simpson_exact_degree2_nonuniform(pts, coeffs):
    assert pts.numel() % 2 == 1
    got = quad("simpson", pts, lambda x: poly_eval(coeffs, x))
    assert got == pytest.approx(poly_integral(coeffs), abs=1e-12)


def test_simpson_nonuniform_matches_panel_formula():
    # a single panel [0, 0.2, 1]: the quadratic through the three points integrates exactly
    pts = torch.tensor([0.0, 0.2, 1.0], dtype=F64)
    q = Simpson().weights(pts)
    # weights solve the moment equations for 1, x, x^2
    V = torch.stack([pts**0, pts, pts**2])
    moments = torch.tensor([1.0, 1 / 2, 1 / 3], dtype=F64)
    torch.testing.assert_close(q, torch.linalg.solve(V, moments), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n", list(range(1, 11)))
def test_gauss_legendre_exact_degree_2n_minus_1(n):
    rule = GaussLegendre()
    x = rule.nodes(n, dtype=F64)
    q = rule.weights(x)
    for k in range(2 * n):
        assert float((q * x**k).sum()) == pytest.approx(1 / (k + 1), abs=1e-13), k
    # and not exact one degree higher: the error on x^(2n) is -(n!)^4 / ((2n+1) ((2n)!)^2)
    err = float((q * x ** (2 * n)).sum()) - 1 / (2 * n + 1)
    expected = -math.factorial(n) ** 4 / ((2 * n + 1) * math.factorial(2 * n) ** 2)
    assert err == pytest.approx(expected, rel=1e-3)


@settings(max_examples=30)
@given(n=st.integers(1, 12), coeffs=polynomials(1))
def test_midpoint_exact_degree1_on_standard_nodes(n, coeffs):
    rule = Midpoint()
    x = rule.nodes(n, dtype=F64)
    got = float((rule.weights(x) * poly_eval(coeffs, x)).sum())
    assert got == pytest.approx(poly_integral(coeffs), abs=1e-13)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_midpoint_not_exact_degree2(n):
    rule = Midpoint()
    x = rule.nodes(n, dtype=F64)
    # composite midpoint error on x^2: -h^2/24 * 2
    h = 1 / n
    assert float((rule.weights(x) * x**2).sum()) - 1 / 3 == pytest.approx(-(h**2) / 12, rel=1e-9)


@pytest.mark.parametrize("rule", ["left", "right"])
@settings(max_examples=40)
@given(pts=gap_partitions(min_points=1 + 1, max_points=16), c=st.floats(-5, 5))
def test_riemann_exact_degree0(rule, pts, c):
    got = quad(rule, pts, lambda x: torch.full_like(x, c))
    assert got == pytest.approx(c, abs=1e-12)


@pytest.mark.parametrize("rule", ["left", "right"])
def test_riemann_not_exact_degree1(rule):
    r = get_quadrature(rule)
    x = r.nodes(10, dtype=F64)
    err = float((r.weights(x) * x).sum()) - 0.5
    # left sums underestimate an increasing function by h/2, right sums overestimate it
    assert err == pytest.approx(-0.05 if rule == "left" else 0.05, rel=1e-9)


@pytest.mark.parametrize("rule", RULES)
@settings(max_examples=25)
@given(data=st.data())
def test_weights_sum_to_one_inside_unit_interval(rule, data):
    """Every rule integrates constants over all of [0, 1], also on partitions that do not reach 0
    or 1 (the missing end pieces are covered by the nearest point)."""
    r = get_quadrature(rule)
    if rule == "gauss-legendre":
        pts = r.nodes(data.draw(st.integers(1, 12)), dtype=F64)
    else:
        full = data.draw(gap_partitions(min_points=4, max_points=16, odd=rule == "simpson"))
        lo = data.draw(st.floats(0.0, 0.1))
        hi = data.draw(st.floats(0.9, 1.0))
        pts = lo + (hi - lo) * full
    assert float(r.weights(pts).sum()) == pytest.approx(1.0, abs=1e-12)


# -- convergence order ----------------------------------------------------------------------------

def _error(rule: str, n: int, f=torch.exp, exact=math.e - 1) -> float:
    r = get_quadrature(rule)
    x = r.nodes(n, dtype=F64)
    return abs(float((r.weights(x) * f(x)).sum()) - exact)


@pytest.mark.parametrize(
    "rule, n, ratio",
    [
        ("left", 64, 2.0),
        ("right", 64, 2.0),
        ("midpoint", 32, 4.0),
        ("trapezoid", 33, 4.0),  # 32 cells -> 64 cells
        ("simpson", 17, 16.0),  # 16 cells -> 32 cells
    ],
)
@pytest.mark.parametrize("f, exact", [(torch.exp, math.e - 1), (torch.sin, 1 - math.cos(1.0))])
def test_convergence_order(rule, n, ratio, f, exact):
    n2 = 2 * n if rule in ("left", "right", "midpoint") else 2 * n - 1
    e1, e2 = _error(rule, n, f, exact), _error(rule, n2, f, exact)
    assert e1 > 1e-12 and e2 > 1e-14
    assert e1 / e2 == pytest.approx(ratio, rel=0.05)


def test_gauss_legendre_converges_spectrally():
    errs = [_error("gauss-legendre", n) for n in (1, 2, 3, 4, 5)]
    assert all(b < a / 50 for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-9


# -- Appendix B weights ---------------------------------------------------------------------------

@settings(max_examples=30)
@given(pts=gap_partitions(min_points=2, max_points=12))
def test_appendix_b_weights(pts):
    dx = torch.diff(pts)  # dx[i-1] = Δx_i
    m = pts.numel() - 1
    left = torch.cat([dx, torch.zeros(1, dtype=F64)])  # q_i = Δx_{i+1}, q_m = 0
    right = torch.cat([torch.zeros(1, dtype=F64), dx])  # q_0 = 0, q_i = Δx_i
    trap = torch.empty(m + 1, dtype=F64)
    trap[0] = dx[0] / 2
    trap[m] = dx[-1] / 2
    trap[1:m] = (dx[1:] + dx[:-1]) / 2
    torch.testing.assert_close(LeftRiemann().weights(pts), left, rtol=0, atol=1e-15)
    torch.testing.assert_close(RightRiemann().weights(pts), right, rtol=0, atol=1e-15)
    torch.testing.assert_close(Trapezoid().weights(pts), trap, rtol=0, atol=1e-15)


def test_trapezoid_docstring_example():
    q = Trapezoid().weights(torch.tensor([0.0, 0.25, 1.0], dtype=F64))
    assert q.tolist() == [0.125, 0.5, 0.375]


def test_standard_nodes():
    assert LeftRiemann().nodes(4, dtype=F64).tolist() == [0.0, 0.25, 0.5, 0.75]
    assert RightRiemann().nodes(4, dtype=F64).tolist() == [0.25, 0.5, 0.75, 1.0]
    assert Midpoint().nodes(4, dtype=F64).tolist() == [0.125, 0.375, 0.625, 0.875]
    assert Trapezoid().nodes(5, dtype=F64).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert Simpson().nodes(3, dtype=F64).tolist() == [0.0, 0.5, 1.0]
    assert Trapezoid().nodes(1, dtype=F64).tolist() == [0.5]
    gl = GaussLegendre().nodes(2, dtype=F64)
    torch.testing.assert_close(gl, torch.tensor([0.5 - 0.5 / math.sqrt(3), 0.5 + 0.5 / math.sqrt(3)], dtype=F64))
    # the standard nodes of the Riemann and midpoint rules give no point a zero weight
    for rule in ("left", "right", "midpoint"):
        r = get_quadrature(rule)
        torch.testing.assert_close(r.weights(r.nodes(8, dtype=F64)), torch.full((8,), 1 / 8, dtype=F64))


# -- dtype / device -------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_follow_dtype(rule, dtype):
    r = get_quadrature(rule)
    x = r.nodes(5, dtype=dtype)
    assert x.dtype == dtype
    q = r.weights(x)
    assert q.dtype == dtype and q.device == x.device
    assert float(q.sum()) == pytest.approx(1.0, abs=10 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("rule", RULES)
def test_weights_follow_device(rule):
    r = get_quadrature(rule)
    x = r.nodes(5, device="meta", dtype=torch.float64)
    assert x.device.type == "meta"
    q = r.weights(x)
    assert q.device.type == "meta" and q.dtype == torch.float64 and q.shape == (5,)


def test_default_dtype_nodes():
    assert Trapezoid().nodes(3).dtype == torch.get_default_dtype()


# -- integrate ------------------------------------------------------------------------------------

def test_integrate_callable_and_tensor():
    x = Simpson().nodes(101, dtype=F64)
    assert float(integrate(lambda t: t**2, x, "simpson")) == pytest.approx(1 / 3, abs=1e-14)
    vals = torch.stack([x**0, x, 3 * x**2], dim=1)  # (points, 3): integrated column by column
    out = integrate(vals, x, "trapezoid")
    assert out.shape == (3,)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5, 1 + 0.5 / 100**2], dtype=F64), rtol=1e-12, atol=1e-12)
    # an instance works as well as a name, and trapezoid is the default
    assert float(integrate(torch.exp, x, Trapezoid())) == float(integrate(torch.exp, x))


def test_integrate_casts_weights_to_values_dtype():
    x = Trapezoid().nodes(11, dtype=F64)
    out = integrate(torch.ones(11, 2, dtype=torch.float32), x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.ones(2))


def test_integrate_length_mismatch():
    x = torch.linspace(0, 1, 5, dtype=F64)
    with pytest.raises(ValueError, match=r"4 values along dim 0 .* 5 points"):
        integrate(torch.ones(4), x)


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 4, 10])
def test_simpson_even_count(n):
    with pytest.raises(ValueError, match=rf"odd number of points.*got {n}\b"):
        Simpson().weights(torch.linspace(0, 1, n))
    with pytest.raises(ValueError, match=rf"got {n}\b"):
        Simpson().nodes(n)


def test_not_increasing():
    with pytest.raises(ValueError, match=r"strictly increasing.*point 2 \(0\.3\) <= point 1 \(0\.5\)"):
        Trapezoid().weights(torch.tensor([0.0, 0.5, 0.3, 1.0]))
    with pytest.raises(ValueError, match=r"strictly increasing.*point 2 \(0\.5\) <= point 1 \(0\.5\)"):
        Trapezoid().weights(torch.tensor([0.0, 0.5, 0.5, 1.0]))


@pytest.mark.parametrize("pts, span", [([-0.1, 0.5, 1.0], r"\[-0\.1, 1\]"), ([0.0, 0.5, 1.25], r"\[0, 1\.25\]")])
def test_leaves_unit_interval(pts, span):
    with pytest.raises(ValueError, match=r"leaves \[0, 1\].*" + span):
        Trapezoid().weights(torch.tensor(pts))


def test_nan_and_inf():
    with pytest.raises(ValueError, match=r"non-finite.*nan"):
        Trapezoid().weights(torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match=r"non-finite.*inf"):
        Midpoint().weights(torch.tensor([0.0, float("inf")]))


def test_bad_shapes_and_types():
    with pytest.raises(ValueError, match=r"1-D.*\(2, 2\)"):
        Trapezoid().weights(torch.rand(2, 2))
    with pytest.raises(ValueError, match=r"non-empty"):
        Trapezoid().weights(torch.empty(0))
    with pytest.raises(TypeError, match=r"floating"):
        Trapezoid().weights(torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"torch.Tensor"):
        Trapezoid().weights([0.0, 1.0])
    with pytest.raises(ValueError, match=r">= 1, got 0"):
        Trapezoid().nodes(0)


def test_gauss_legendre_rejects_other_points():
    with pytest.raises(ValueError, match=r"Gauss-Legendre.*own 5 nodes.*GaussLegendre\(\)\.nodes\(5\)"):
        GaussLegendre().weights(torch.linspace(0, 1, 5))
    # its own nodes are accepted in float32 too
    q = GaussLegendre().weights(GaussLegendre().nodes(7, dtype=torch.float32))
    assert q.dtype == torch.float32 and float(q.sum()) == pytest.approx(1.0, abs=1e-6)


def test_unknown_quadrature_lists_names():
    with pytest.raises(ValueError, match=r"unknown quadrature 'gauss'") as info:
        get_quadrature("gauss")
    for name in RULES:
        assert repr(name) in str(info.value)
    assert set(QUADRATURES) == set(RULES)
    with pytest.raises(ValueError, match="unknown quadrature"):
        integrate(torch.exp, torch.linspace(0, 1, 3), "boole")


def test_get_quadrature_instance_passthrough():
    r = Simpson()
    assert get_quadrature(r) is r
    for name in RULES:
        assert get_quadrature(name).name == name


# -- the size rule: which point counts a rule takes, and the nearest one -------------------------

@given(rule=st.sampled_from(RULES), size=st.integers(1, 60), low=st.integers(1, 60), span=st.integers(0, 10))
def test_nearest_size_is_allowed_and_as_close_as_the_range_permits(rule, size, low, span):
    q = get_quadrature(rule)
    high = low + span
    got = q.nearest_size(size, low, high)
    q.check_size(got)  # an allowed count: no error
    assert q.allows(got)
    if q.allows(size):
        assert got == size
    else:  # only Simpson refuses counts: the odd neighbour, below unless that leaves [low, high]
        assert rule == "simpson" and size % 2 == 0
        assert got == (size + 1 if size - 1 < low and size + 1 <= high else size - 1)


def test_simpson_allows_odd_counts_only():
    q = get_quadrature("simpson")
    assert [n for n in range(1, 10) if q.allows(n)] == [1, 3, 5, 7, 9]
    assert (q.nearest_size(8), q.nearest_size(2), q.nearest_size(8, low=8, high=9), q.nearest_size(8, 8, 8)) == (7, 1, 9, 7)
    with pytest.raises(ValueError, match="size must be an int >= 1, got 0"):
        q.nearest_size(0)
