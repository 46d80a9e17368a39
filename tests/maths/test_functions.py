"""Continuous weight functions: interpolation exactness, grid_sample equivalence, gradients, seams."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import gap_partitions
from torchinn.maths import ContinuousFunction
from torchinn.maths.functions import interpolation_taps
from torchinn.maths.partition import Chunk
from torchinn.maths.quadrature import GaussLegendre

F64 = torch.float64


def lin(m: int, dtype=F64) -> torch.Tensor:
    return torch.linspace(0, 1, m, dtype=dtype)


def sample1d(values: torch.Tensor, points: torch.Tensor, control: torch.Tensor, kind: str = "cubic") -> torch.Tensor:
    return ContinuousFunction(values, dims=(0,), kind=kind).sample({0: [Chunk(points, control)]}).detach()


# -- on the control grid --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cubic", "linear"])
@settings(max_examples=30)
@given(control=st.one_of(gap_partitions(min_points=2, max_points=12),
                         st.integers(1, 12).map(lambda n: GaussLegendre().nodes(n, dtype=F64)),
                         st.integers(1, 12).map(lambda n: torch.linspace(0, 1, n, dtype=F64))),
       seed=st.integers(0, 1000))
def test_control_grid_returns_control_values(kind, control, seed):
    g = torch.Generator().manual_seed(seed)
    m = control.numel()
    values = torch.randn(3, m, 2, generator=g, dtype=F64)
    f = ContinuousFunction(values, dims=(1,), kind=kind)
    out = f.sample({1: [Chunk(control.clone(), control)]})  # a copy: the interpolation really runs
    assert torch.equal(out, values)
    # also in float32
    f32 = ContinuousFunction(values.float(), dims=(1,), kind=kind)
    out32 = f32.sample({1: [Chunk(control.float().clone(), control.float())]})
    assert torch.equal(out32, values.float())


def test_same_object_skips_sampling():
    values = torch.randn(4, 5)
    f = ContinuousFunction(values, dims=(0, 1))
    c0, c1 = lin(4, torch.float32), lin(5, torch.float32)
    out = f.sample({0: [Chunk(c0, c0)], 1: [Chunk(c1, c1)]})
    assert out is f.values
    assert f.sample({}) is f.values and f.sample({0: None}) is f.values


def test_docstring_values():
    f = ContinuousFunction(torch.tensor([0.0, 1.0, 4.0, 9.0]), dims=(0,))
    out = f.sample({0: [Chunk(torch.tensor([0.5]), lin(4, torch.float32))]})
    # Keys (a = -0.75) at the centre of [1, 4] with neighbours 0 and 9: (-3*0 + 19*1 + 19*4 - 3*9) / 32
    assert out.tolist() == [(19 * 1 + 19 * 4 - 3 * 9) / 32]


# -- grid_sample equivalence ----------------------------------------------------------------------

def _grid(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """grid_sample grid for rows at ``px`` (dim -2) and columns at ``py`` (dim -1), in [-1, 1]."""
    gy, gx = torch.meshgrid(2 * px - 1, 2 * py - 1, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


@pytest.mark.parametrize("kind, mode", [("cubic", "bicubic"), ("linear", "bilinear")])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@settings(max_examples=25)
@given(h=st.integers(1, 9), w=st.integers(2, 9), k1=st.integers(1, 12), k2=st.integers(1, 12),
       seed=st.integers(0, 10_000))
def test_matches_grid_sample_2d(kind, mode, dtype, tol, h, w, k1, k2, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(h, w, generator=g, dtype=F64).to(dtype)
    px = torch.rand(k1, generator=g, dtype=F64).to(dtype)
    py = torch.rand(k2, generator=g, dtype=F64).to(dtype)
    f = ContinuousFunction(values, dims=(0, 1), kind=kind)
    ours = f.sample({0: [Chunk(px, lin(h, dtype))], 1: [Chunk(py, lin(w, dtype))]})
    ref = F.grid_sample(values[None, None], _grid(px, py), mode=mode, padding_mode="border",
                        align_corners=True)[0, 0]
    assert ours.shape == (k1, k2)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_matches_listing1_layout():
    """Conv weights (out, in, k, k), continuous in out and in: every kernel tap is one channel of
    a grid_sample image (the seed's Listing 1, with border padding)."""
    torch.manual_seed(0)
    values = torch.randn(6, 5, 3, 3, dtype=F64)
    po, pi = torch.rand(4, dtype=F64), torch.rand(7, dtype=F64)
    f = ContinuousFunction(values, dims=(0, 1))
    ours = f.sample({0: [Chunk(po, lin(6))], 1: [Chunk(pi, lin(5))]})
    img = values.permute(2, 3, 0, 1).reshape(1, 9, 6, 5)
    ref = F.grid_sample(img, _grid(po, pi), mode="bicubic", padding_mode="border", align_corners=True)
    ref = ref.reshape(3, 3, 4, 7).permute(2, 3, 0, 1)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_linear_matches_grid_sample_3d():
    torch.manual_seed(1)
    values = torch.randn(4, 5, 6, dtype=F64)
    p = [torch.rand(n, dtype=F64) for n in (3, 2, 5)]
    f = ContinuousFunction(values, dims=(0, 1, 2), kind="linear")
    ours = f.sample({d: [Chunk(p[d], lin(values.shape[d]))] for d in range(3)})
    gz, gy, gx = torch.meshgrid(*(2 * t - 1 for t in p), indexing="ij")
    grid = torch.stack([gx, gy, gz], dim=-1)[None]
    ref = F.grid_sample(values[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_outside_control_range_takes_end_values():
    control = torch.tensor([0.2, 0.5, 0.8], dtype=F64)
    values = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    out = sample1d(values, torch.tensor([0.0, 0.1, 0.9, 1.0], dtype=F64), control)
    assert out.tolist() == [1.0, 1.0, 3.0, 3.0]


# -- accuracy -------------------------------------------------------------------------------------

@settings(max_examples=25)
@given(m=st.integers(2, 20), a=st.floats(-3, 3), b=st.floats(-3, 3), seed=st.integers(0, 1000))
def test_linear_kind_reproduces_linear_functions(m, a, b, seed):
    control = lin(m)
    x = torch.rand(17, generator=torch.Generator().manual_seed(seed), dtype=F64)
    out = sample1d(a + b * control, x, control, "linear")
    torch.testing.assert_close(out, a + b * x, rtol=0, atol=1e-12)


@settings(max_examples=25)
@given(m=st.integers(1, 20), c=st.floats(-3, 3), seed=st.integers(0, 1000))
def test_cubic_reproduces_constants(m, c, seed):
    x = torch.rand(17, generator=torch.Generator().manual_seed(seed), dtype=F64)
    out = sample1d(torch.full((m,), c, dtype=F64), x, lin(m))
    torch.testing.assert_close(out, torch.full_like(x, c), rtol=0, atol=1e-13)


def test_cubic_on_linear_functions_is_first_order():
    """PyTorch's bicubic kernel (Keys, a = -0.75) does not reproduce linear functions (only a = -1/2
    does), and border padding adds to the error in the two end cells: on a line of slope 1 the
    error is at most 0.0482 h inside and 0.0963 h near the ends, i.e. first order in h."""
    x = torch.linspace(0, 1, 2001, dtype=F64)
    errs = []
    for m in (9, 17, 33):
        control, h = lin(m), 1 / (m - 1)
        err = (sample1d(control, x, control) - x).abs().detach()
        inner = (x >= h) & (x <= 1 - h)
        assert float(err[inner].max()) <= 0.0482 * h
        assert float(err.max()) <= 0.0963 * h
        errs.append(float(err.max()))
    assert errs[0] / errs[1] == pytest.approx(2.0, rel=0.05)
    assert errs[1] / errs[2] == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("kind, bound, gain", [("cubic", 0.03, 3.5), ("linear", 0.006, 12.0)])
def test_close_for_smooth_functions(kind, bound, gain):
    """Both kinds converge on a smooth function; linear at second order, PyTorch's cubic (a = -0.75,
    border padding) only at first order."""
    control = lin(33)
    x = torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=F64)
    f = lambda t: torch.sin(2 * torch.pi * t) + t**2  # noqa: E731
    err = float((sample1d(f(control), x, control, kind) - f(x)).abs().max())
    assert err < bound
    fine = lin(129)  # h / 4
    err_fine = float((sample1d(f(fine), x, fine, kind) - f(x)).abs().max())
    assert err / err_fine > gain


def test_nonuniform_control_grid_maps_positions():
    """Between Gauss-Legendre control points the position is mapped linearly to the index axis:
    a linear function of the index is reproduced by the linear kind."""
    control = GaussLegendre().nodes(6, dtype=F64)
    values = torch.arange(6, dtype=F64)
    mid = (control[1:] + control[:-1]) / 2
    torch.testing.assert_close(sample1d(values, mid, control, "linear"), values[:-1] + 0.5)


# -- gradients ------------------------------------------------------------------------------------

def _inside_points(control: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Points strictly inside the control range and away from the control points."""
    g = torch.Generator().manual_seed(seed)
    j = torch.randint(0, control.numel() - 1, (k,), generator=g)
    frac = 0.1 + 0.8 * torch.rand(k, generator=g, dtype=F64)
    return control[j] + frac * (control[j + 1] - control[j])


@pytest.mark.parametrize("kind", ["cubic", "linear"])
@pytest.mark.parametrize("grid", ["uniform", "gauss-legendre"])
def test_gradcheck_values_and_points(kind, grid):
    c0 = lin(5) if grid == "uniform" else GaussLegendre().nodes(5, dtype=F64)
    c1 = lin(4)
    values = torch.randn(5, 4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    f = ContinuousFunction(values, dims=(0, 1), kind=kind)
    p0 = _inside_points(c0, 6, 1).requires_grad_(True)
    p1 = _inside_points(c1, 3, 2).requires_grad_(True)
    v = f.values.detach().clone().requires_grad_(True)

    def run(v, p0, p1):
        grids = {0: [Chunk(p0, c0)], 1: [Chunk(p1, c1)]}
        return torch.func.functional_call(f, {"values": v}, (grids,))

    assert torch.autograd.gradcheck(run, (v, p0, p1), eps=1e-6, atol=1e-6)


def test_gradients_flow_through_sample():
    f = ContinuousFunction(torch.randn(6, dtype=F64), dims=(0,))
    p = _inside_points(lin(6), 4, 0).requires_grad_(True)
    out = f.sample({0: [Chunk(p, lin(6))]})
    out.sum().backward()
    assert f.values.grad is not None and float(f.values.grad.abs().sum()) > 0
    assert p.grad is not None and bool(torch.isfinite(p.grad).all())
    # the cubic weights of each point sum to one: the value gradient sums to the point count
    assert float(f.values.grad.sum()) == pytest.approx(4.0)


def test_interpolation_taps():
    idx, w = interpolation_taps(torch.tensor([0.0, 0.3, 1.0], dtype=F64), lin(5), "cubic")
    assert idx.shape == (3, 4) and w.shape == (3, 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, dtype=F64))
    assert idx.min() >= 0 and idx.max() <= 4
    idx, w = interpolation_taps(torch.tensor([0.3], dtype=F64), lin(5), "linear")
    assert idx.tolist() == [[1, 2]]
    torch.testing.assert_close(w, torch.tensor([[0.8, 0.2]], dtype=F64))
    with pytest.raises(ValueError, match="unknown interpolation kind 'quintic'"):
        interpolation_taps(torch.tensor([0.3]), lin(5), "quintic")


# -- composite chunks -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cubic", "linear"])
def test_composite_chunks_do_not_mix(kind):
    values = torch.cat([torch.zeros(4, 3), torch.full((5, 3), 10.0)]).double()
    f = ContinuousFunction(values, dims=(0,), kind=kind)
    a = torch.tensor([0.0, 0.5, 0.9, 0.99, 1.0], dtype=F64)
    b = torch.tensor([0.0, 0.01, 0.2, 1.0], dtype=F64)
    out = f.sample({0: [Chunk(a, lin(4)), Chunk(b, lin(5))]})
    assert out.shape == (9, 3)
    assert torch.equal(out[:5], torch.zeros(5, 3, dtype=F64))
    # (cubic weights sum to one up to rounding; mixing across the seam would be off by O(1))
    torch.testing.assert_close(out[5:], torch.full((4, 3), 10.0, dtype=F64), rtol=0, atol=1e-12)


def test_composite_equals_parts_sampled_separately():
    torch.manual_seed(3)
    values = torch.randn(2, 11, dtype=F64)
    a, b = torch.rand(3, dtype=F64), torch.rand(6, dtype=F64)
    ca, cb = lin(4), GaussLegendre().nodes(7, dtype=F64)
    f = ContinuousFunction(values, dims=(1,))
    both = f.sample({1: [Chunk(a, ca), Chunk(b, cb)]})
    first = ContinuousFunction(values[:, :4], dims=(1,)).sample({1: [Chunk(a, ca)]})
    second = ContinuousFunction(values[:, 4:], dims=(1,)).sample({1: [Chunk(b, cb)]})
    torch.testing.assert_close(both, torch.cat([first, second], dim=1), rtol=0, atol=0)
    # a chunk at full size (points is control) is copied as is
    mixed = f.sample({1: [Chunk(ca, ca), Chunk(b, cb)]})
    torch.testing.assert_close(mixed[:, :4], values[:, :4], rtol=0, atol=0)


# -- errors ---------------------------------------------------------------------------------------

def test_device_mismatch_raises():
    f = ContinuousFunction(torch.randn(4), dims=(0,))
    p = torch.linspace(0, 1, 3, device="meta")
    with pytest.raises(ValueError, match=r"points are on meta.*values are on cpu"):
        f.sample({0: [Chunk(p, torch.linspace(0, 1, 4, device="meta"))]})


def test_errors():
    with pytest.raises(ValueError, match="unknown interpolation kind 'spline'"):
        ContinuousFunction(torch.randn(3), dims=(0,), kind="spline")
    with pytest.raises(ValueError, match="distinct"):
        ContinuousFunction(torch.randn(3, 3), dims=(0, -2))
    f = ContinuousFunction(torch.randn(3, 4), dims=(-1,))
    assert f.dims == (1,)
    with pytest.raises(ValueError, match=r"dim 0 is not continuous; continuous dims are \(1,\)"):
        f.sample({0: [Chunk(lin(2), lin(3))]})
    with pytest.raises(ValueError, match=r"dim 1 has 4 control values but .* \[3, 2\] \(sum 5\)"):
        f.sample({1: [Chunk(lin(2), lin(3)), Chunk(lin(2), lin(2))]})
    assert "dims=(1,)" in repr(f) and "kind='cubic'" in repr(f)


def test_values_are_a_copy_and_trainable():
    src = torch.randn(3)
    f = ContinuousFunction(src, dims=(0,))
    src.zero_()
    assert float(f.values.detach().abs().sum()) > 0
    assert isinstance(f.values, torch.nn.Parameter) and f.values.requires_grad


def test_memo_shares_taps_between_functions_on_the_same_chunks(monkeypatch):
    """One pass over a network computes each chunk's taps once; the results are unchanged."""
    calls = []

    def counted(points, control, kind="cubic"):
        calls.append((id(points), points.dtype))
        return interpolation_taps(points, control, kind)

    monkeypatch.setattr("torchinn.maths.functions.interpolation_taps", counted)
    c0, c1 = lin(6), lin(5)
    grids = {0: [Chunk(_inside_points(c0, 4, 0), c0)], 1: [Chunk(_inside_points(c1, 3, 1), c1)]}
    g = torch.Generator().manual_seed(0)
    weight = ContinuousFunction(torch.randn(6, 5, 3, dtype=F64, generator=g), dims=(0, 1))
    bias = ContinuousFunction(torch.randn(6, dtype=F64, generator=g), dims=(0,))
    memo: dict = {}
    w_memo, b_memo = weight.sample(grids, memo), bias.sample({0: grids[0]}, memo)
    assert len(calls) == 2  # once per chunk, not once per (function, dim)
    torch.testing.assert_close(w_memo, weight.sample(grids), rtol=0, atol=0)
    torch.testing.assert_close(b_memo, bias.sample({0: grids[0]}), rtol=0, atol=0)
    # the memo is keyed by the dtype of the values too: a float32 function gets float32 taps
    b32 = ContinuousFunction(bias.values.detach().float(), dims=(0,))
    before = len(calls)
    assert b32.sample({0: grids[0]}, memo).dtype == torch.float32 and len(calls) == before + 1
