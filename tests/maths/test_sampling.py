"""The sampler's fast path (taps kept across passes, quadrature folded into the taps) against the
dense path: interpolation matrices applied one dimension after the other, quadrature after."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchinn.maths import FixedPartition, TrainablePartition, UniformPartition
from torchinn.maths.functions import interpolation_taps
from torchinn.maths.partition import CompositePartition, Partition
from torchinn.maths.sampling import sample_tensors
from torchinn.maths.structured import Atom, StructuredFunction

F64 = torch.float64


def dense_matrix(p: Partition, kind: str) -> torch.Tensor:
    """``(size, max_size)``: row ``i`` interpolates the control values at point ``i``."""
    if isinstance(p, CompositePartition):
        return torch.block_diag(*(dense_matrix(q, kind) for q in p.parts))
    points = p.points(dtype=F64)
    idx, w = interpolation_taps(points, p.control_points(dtype=F64), kind)
    m = torch.zeros(points.numel(), p.max_size, dtype=F64)
    rows = torch.arange(points.numel())[:, None].expand_as(idx)
    return m.index_put((rows, idx), w, accumulate=True)


def dense_sample(fn: StructuredFunction, p_out: Partition, p_in: Partition, kind: str) -> torch.Tensor:
    """The conv weight ``(out, in, k)`` sampled the slow way: dense matrices, then quadrature."""
    values = fn.blocks[0].values
    out = torch.einsum("ia,abk,jb->ijk", dense_matrix(p_out, kind), values, dense_matrix(p_in, kind))
    return out * (p_in.weights(dtype=F64) * p_in.max_size)[None, :, None]


def random_partition(draw, n: int, kind_of: str) -> Partition:
    size = draw(st.integers(1, n))
    if kind_of == "uniform":
        return UniformPartition(n, "trapezoid").resize(size)
    raw = draw(st.lists(st.floats(0.0, 1.0), min_size=size, max_size=size, unique=True))
    pts = torch.tensor(sorted(raw), dtype=F64)
    if size > 1 and bool((pts.diff() < 1e-3).any()):
        pts = torch.linspace(0.1, 0.9, size, dtype=F64)
    fixed = FixedPartition(pts, "trapezoid", max_size=n)
    return fixed if kind_of == "fixed" else TrainablePartition(fixed).double()


@st.composite
def cases(draw):
    n_out, n_in = draw(st.integers(1, 12)), draw(st.integers(2, 12))
    kinds = ["uniform", "fixed", "trainable"]
    return (random_partition(draw, n_out, draw(st.sampled_from(kinds))),
            random_partition(draw, n_in, draw(st.sampled_from(kinds))),
            draw(st.sampled_from(["cubic", "catmull-rom", "linear"])), draw(st.integers(0, 1000)),
            # rows of 9 and more sample the input dim in place (functions.middle_tap_sum)
            draw(st.sampled_from([3, 9, 11])))


def make_function(n_out: int, p_in: Partition, kind: str, seed: int, k: int = 3) -> StructuredFunction:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_out, p_in.max_size, k, generator=g, dtype=F64)
    plan = (((Atom(n_out, "out"),),), ((Atom(p_in.max_size, "in", integrate=True),),), ((Atom(k),),))
    return StructuredFunction(weight, plan, {"in": p_in.full_weights(dtype=F64)}, kind)


@settings(max_examples=60)
@given(case=cases())
def test_fast_path_equals_dense_path_values_and_gradients(case):
    p_out, p_in, kind, seed, k = case
    fn = make_function(p_out.max_size, p_in, kind, seed, k)
    parts = {"out": p_out, "in": p_in}
    fast = sample_tensors({"w": fn}, parts)["w"]
    slow = dense_sample(fn, p_out, p_in, kind)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    # again: the taps of uniform partitions now come from their store
    torch.testing.assert_close(sample_tensors({"w": fn}, parts)["w"], fast, rtol=0, atol=0)
    # gradients to the control values and to the trainable partitions' points are the same
    upstream = torch.randn(fast.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    leaves = [fn.blocks[0].values] + [p.delta for p in (p_out, p_in) if isinstance(p, TrainablePartition)]
    g_fast = torch.autograd.grad((sample_tensors({"w": fn}, parts)["w"] * upstream).sum(), leaves,
                                 allow_unused=True, materialize_grads=True)
    g_slow = torch.autograd.grad((dense_sample(fn, p_out, p_in, kind) * upstream).sum(), leaves,
                                 allow_unused=True, materialize_grads=True)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert float(g_fast[0].abs().sum()) > 0  # the upstream gradient reaches the control values


@pytest.mark.parametrize("k", [3, 9])
def test_composite_partition_equals_dense_path(k):
    p_in = CompositePartition([UniformPartition(5).resize(3), FixedPartition([0.2, 0.7], max_size=4)])
    p_out = UniformPartition(6).resize(4)
    fn = make_function(6, p_in, "cubic", 0, k)
    fast = sample_tensors({"w": fn}, {"out": p_out, "in": p_in})["w"]
    assert fast.shape == (4, 5, k)
    torch.testing.assert_close(fast, dense_sample(fn, p_out, p_in, "cubic"), rtol=1e-12, atol=1e-12)
    upstream = torch.randn(fast.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    values = fn.blocks[0].values
    g_fast, = torch.autograd.grad((sample_tensors({"w": fn}, {"out": p_out, "in": p_in})["w"] * upstream).sum(), values)
    g_slow, = torch.autograd.grad((dense_sample(fn, p_out, p_in, "cubic") * upstream).sum(), values)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-10, atol=1e-12)


def test_the_input_dim_of_a_3x3_kernel_is_sampled_in_place_without_moving_it(monkeypatch):
    """A conv weight's input channels (rows of 9) go through middle_tap_sum, whose gradient is
    the transposed taps' sum; a 1x1 kernel and trainable points keep the moved path (the
    gradient to the points was measured slower on rows of 9: grid tuning 129 ms against 110)."""
    import torchinn.maths.functions as functions
    used = []
    for name in ("tap_sum", "middle_tap_sum"):
        fn = getattr(functions, name)
        monkeypatch.setattr(functions, name, lambda *a, fn=fn, name=name: used.append(name) or fn(*a))
    p_out, p_in = UniformPartition(8).resize(5), UniformPartition(12).resize(7)
    for k, trainable, expected in ((9, False, "middle_tap_sum"), (1, False, "tap_sum"), (9, True, "tap_sum")):
        used.clear()
        part = TrainablePartition(p_in).double() if trainable else p_in
        fn = make_function(8, part, "cubic", 3, k)
        out = sample_tensors({"w": fn}, {"out": p_out, "in": part})["w"]
        assert used == ["tap_sum", expected] and out.shape == (5, 7, k)
        torch.testing.assert_close(out, dense_sample(fn, p_out, part, "cubic"), rtol=1e-12, atol=1e-12)
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(k), dtype=F64)
        leaves = [fn.blocks[0].values] + ([part.delta] if trainable else [])
        g_fast = torch.autograd.grad((out * up).sum(), leaves)
        g_slow = torch.autograd.grad((dense_sample(fn, p_out, part, "cubic") * up).sum(), leaves)
        for a, b in zip(g_fast, g_slow):
            assert float(a.abs().max()) > 1e-3
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)



def test_uniform_taps_are_kept_across_passes_and_follow_resize(monkeypatch):
    calls = []

    def counted(points, control, kind="cubic"):
        calls.append(points.numel())
        return interpolation_taps(points, control, kind)

    monkeypatch.setattr("torchinn.maths.functions.interpolation_taps", counted)
    p_in, p_out = UniformPartition(9).resize(5), UniformPartition(7).resize(4)
    fn = make_function(7, p_in, "cubic", 3)
    parts = {"out": p_out, "in": p_in}
    assert p_in.chunks()[0] is p_in.chunks()[0]           # the same chunk for the same size
    first = sample_tensors({"w": fn}, parts)["w"]
    second = sample_tensors({"w": fn}, parts)["w"]
    assert sorted(calls) == [4, 5] and torch.equal(first, second)   # taps computed once
    p_in.resize(6)
    resized = sample_tensors({"w": fn}, parts)["w"]
    assert sorted(calls) == [4, 5, 6] and resized.shape == (4, 6, 3)
    torch.testing.assert_close(resized, dense_sample(fn, p_out, p_in, "cubic"), rtol=1e-12, atol=1e-12)


def test_changed_fixed_points_are_seen_in_the_next_pass():
    """Points without a store (fixed, trainable) get new taps in every pass."""
    p_in = FixedPartition(torch.tensor([0.0, 0.3, 1.0], dtype=F64), max_size=6)
    p_out = UniformPartition(4)
    fn = make_function(4, p_in, "cubic", 5)
    before = sample_tensors({"w": fn}, {"out": p_out, "in": p_in})["w"]
    with torch.no_grad():
        p_in._points[1] = 0.6
    after = sample_tensors({"w": fn}, {"out": p_out, "in": p_in})["w"]
    assert float((after - before).detach().abs().max()) > 1e-3
    torch.testing.assert_close(after, dense_sample(fn, p_out, p_in, "cubic"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_chunks_per_device_and_dtype(dtype):
    p = UniformPartition(8).resize(3)
    chunk = p.chunks(dtype=dtype)[0]
    assert chunk.points.dtype == dtype and chunk.taps == {} and chunk is p.chunks(dtype=dtype)[0]
    assert p.resize(8).chunks(dtype=dtype)[0].points is p.chunks(dtype=dtype)[0].control  # full: no sampling


def test_a_uniform_partition_keeps_a_bounded_number_of_sizes():
    # random sizes draw many sizes of a group; their points, weights and taps are not all kept
    from torchinn.maths import partition as P

    p = P.UniformPartition(512)
    for size in range(1, 400):
        p.resize(size)
        p.chunks()
        p.weights()
        assert len(p._cache) <= P.CACHE_ENTRIES
    p.resize(37)
    assert torch.equal(p.chunks()[0].points, P.UniformPartition(512).resize(37).points())
