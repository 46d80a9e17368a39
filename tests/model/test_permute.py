"""Channel permutation by TSP on total variation (torchinn.model.permute, its solvers in torchinn.model.tsp)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchinn.model.permute import (
    apply_permutation,
    default_time_limit,
    distance_matrix,
    greedy_path,
    order_channels,
    path_length,
    solve_path,
    total_variation,
)
from torchinn.model.tsp import _integer_matrix

try:
    import fast_tsp  # noqa: F401

    HAVE_FAST_TSP = True
except ImportError:  # pragma: no cover - fast_tsp is optional
    HAVE_FAST_TSP = False
needs_fast_tsp = pytest.mark.skipif(not HAVE_FAST_TSP, reason="fast_tsp is not installed")
SOLVERS = ["local", pytest.param("fast_tsp", marks=needs_fast_tsp)]


def is_permutation(p: torch.Tensor, n: int) -> bool:
    return p.dtype == torch.long and sorted(p.tolist()) == list(range(n))


def permuted(members, perm):
    """The group after the permutation, as (tensor, dim) members again."""
    return [(t, d) for t, (_, d) in zip(apply_permutation(members, perm), members)]


def brute_tv(members) -> float:
    """Total variation by explicit loops over channels."""
    total = 0.0
    for t, d in members:
        t = t.double().movedim(d, 0)
        for i in range(t.shape[0] - 1):
            total += float((t[i + 1] - t[i]).abs().sum())
    return total


@st.composite
def groups(draw, min_n: int = 1, max_n: int = 24) -> list[tuple[torch.Tensor, int]]:
    """A random channel group: 1-3 tensors of different shapes sharing n channels on some dim."""
    n = draw(st.integers(min_n, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    members = []
    for _ in range(draw(st.integers(1, 3))):
        other = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
        dim = draw(st.integers(0, len(other)))
        shape = other[:dim] + [n] + other[dim:]
        scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
        t = torch.randn(shape, generator=gen) * scale
        if draw(st.booleans()):  # ties and repeated channels happen in real weights
            t = t.round()
        members.append((t, dim))
    return members


def smooth_rows(n: int = 120, k: int = 40) -> torch.Tensor:
    """Rows of a smooth 2-D function, in their natural (smooth) order."""
    x = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
    y = torch.linspace(0, 1, k, dtype=torch.float64)[None, :]
    return torch.sin(3 * x + 2 * y) + x * y + 0.5 * x


# ---------------------------------------------------------------------------------------------
# total variation and distances
# ---------------------------------------------------------------------------------------------
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=50))
def test_tv_of_sorted_vector_is_max_minus_min(values):
    v = torch.tensor(sorted(values), dtype=torch.float64)
    assert total_variation([(v, 0)]) == pytest.approx(float(v.max() - v.min()), rel=1e-12, abs=1e-9)


@given(groups())
def test_tv_matches_loop(members):
    # differences are taken in float32 (one rounding each), the sum in float64
    assert total_variation(members) == pytest.approx(brute_tv(members), rel=1e-7, abs=1e-9)
    as64 = [(t.double(), d) for t, d in members]
    assert total_variation(as64) == pytest.approx(brute_tv(members), rel=1e-12, abs=1e-12)


@settings(max_examples=40)
@given(groups(max_n=12))
def test_distance_matrix_matches_loop(members):
    D = distance_matrix(members)
    n = members[0][0].shape[members[0][1]]
    assert D.shape == (n, n) and D.dtype == torch.float64
    for i in range(n):
        for j in range(n):
            want = sum(float((t.double().select(d, i) - t.double().select(d, j)).abs().sum())
                       for t, d in members)
            assert float(D[i, j]) == pytest.approx(want, rel=1e-5, abs=1e-6 * (1 + want))
    assert torch.equal(D, D.T)
    assert bool((D.diagonal() == 0).all())


def test_distance_matrix_of_a_big_group_is_float64_accurate():
    # several 1024-value blocks: each summed in float32, the blocks in float64
    gen = torch.Generator().manual_seed(0)
    members = [(torch.randn(300, 256, 3, 3, generator=gen), 0), (torch.randn(300, generator=gen), 0),
               (torch.randn(128, 300, 1, 1, generator=gen) * 100, 1)]
    D = distance_matrix(members)
    x = torch.cat([t.double().movedim(d, 0).reshape(300, -1) for t, d in members], 1)
    exact = torch.cdist(x, x, p=1)
    assert float((D - exact).abs().max() / exact.max()) < 1e-6
    assert torch.equal(D, D.T) and bool((D.diagonal() == 0).all())


def test_distance_matrix_follows_device_and_keeps_float64_inputs():
    x = torch.tensor([[0.1], [0.1 + 1e-12], [5.0]], dtype=torch.float64)
    D = distance_matrix([(x, 0)])
    assert D.device == x.device and D.dtype == torch.float64
    assert float(D[0, 1]) == pytest.approx(1e-12, rel=1e-3)  # float64 input: no float32 rounding


@settings(max_examples=30)
@given(groups(min_n=3, max_n=40), st.integers(0, 3))
def test_path_length_of_solution_is_tv_of_permuted_group(members, seed):
    D = distance_matrix(members)
    perm = solve_path(D, seed=seed)
    assert is_permutation(perm, D.shape[0])
    after = total_variation(permuted(members, perm))
    assert path_length(D, perm) == pytest.approx(after, rel=1e-6, abs=1e-9)
    assert path_length(D, torch.arange(D.shape[0])) == pytest.approx(total_variation(members),
                                                                     rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# the solvers
# ---------------------------------------------------------------------------------------------
@settings(max_examples=60)
@given(groups(max_n=60), st.sampled_from(["local", "fast_tsp"] if HAVE_FAST_TSP else ["local"]))
def test_tv_never_increases(members, solver):
    before = total_variation(members)
    perm = order_channels(members, solver=solver, time_limit=0.02 if solver == "fast_tsp" else None)
    after = total_variation(permuted(members, perm))
    assert after <= before * (1 + 1e-12) + 1e-12


@pytest.mark.parametrize("solver", SOLVERS)
def test_recovers_the_order_of_a_shuffled_smooth_signal(solver):
    rows = smooth_rows()
    smooth_tv = total_variation([(rows, 0)])
    shuffle = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))
    shuffled = rows[shuffle]
    shuffled_tv = total_variation([(shuffled, 0)])
    perm = order_channels([(shuffled, 0)], solver=solver, time_limit=0.5)
    (fixed,) = apply_permutation([(shuffled, 0)], perm)
    fixed_tv = total_variation([(fixed, 0)])
    assert shuffled_tv > 20 * smooth_tv  # the shuffle made it rough...
    assert fixed_tv <= smooth_tv * 1.001  # ...and the solver made it as smooth as it was
    original = shuffle[perm]  # where each channel of the result came from
    assert original.tolist() in (list(range(len(rows))), list(range(len(rows)))[::-1])


def test_beats_greedy_and_identity_on_random_weights():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(200, 30, generator=gen) * torch.rand(200, 1, generator=gen)
    D = distance_matrix([(w, 0)])
    identity = path_length(D, torch.arange(200))
    greedy = path_length(D, greedy_path(D))
    local = path_length(D, solve_path(D))
    assert local < greedy < identity


def all_path_lengths(D: np.ndarray) -> np.ndarray:
    perms = np.array(list(itertools.permutations(range(len(D)))))
    return D[perms[:, :-1], perms[:, 1:]].sum(1)


@settings(max_examples=40)
@given(st.integers(1, 8), st.integers(0, 2**31 - 1), st.booleans())
def test_exact_optimum_for_small_groups(n, seed, integer):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    if integer:  # many ties
        x = (x * 2).round()
    D = distance_matrix([(x, 0)])
    perm = solve_path(D)
    assert is_permutation(perm, n)
    best = float(all_path_lengths(D.numpy()).min()) if n > 1 else 0.0
    assert path_length(D, perm) == pytest.approx(best, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_exact_also_without_triangle_inequality(seed):
    gen = torch.Generator().manual_seed(seed)
    D = torch.rand(7, 7, generator=gen, dtype=torch.float64) ** 4  # not a metric
    D = (D + D.T).fill_diagonal_(0)
    perm = solve_path(D)
    assert path_length(D, perm) == pytest.approx(float(all_path_lengths(D.numpy()).min()))


@pytest.mark.parametrize("n", [11, 150, 700])
def test_reproducible_for_a_fixed_seed(n):
    gen = torch.Generator().manual_seed(n)
    members = [(torch.randn(n, 16, generator=gen), 0), (torch.randn(7, n, generator=gen), 1)]
    first = order_channels(members, seed=5)
    for _ in range(2):
        assert torch.equal(order_channels(members, seed=5), first)
    D = distance_matrix(members)
    assert torch.equal(solve_path(D, seed=5), first)


def test_orientation_is_canonical():
    x = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 6.0, 7.5, 9.0, 8.0, 11.0, 10.0, 12.5])
    perm = order_channels([(x, 0)])
    assert perm[0] < perm[-1]
    assert x[perm].diff().abs().sum() == x.max() - x.min()  # sorted, one way or the other


def test_identity_when_nothing_is_better():
    # already sorted: the identity is optimal and is returned as it is (ties keep it)
    x = torch.arange(30.0)[:, None].repeat(1, 4)
    assert torch.equal(order_channels([(x, 0)]), torch.arange(30))
    # every channel equal: every order has TV 0
    assert torch.equal(order_channels([(torch.ones(25, 3), 0)]), torch.arange(25))


@pytest.mark.parametrize("solver", SOLVERS)
def test_tiny_groups(solver):
    for n in (1, 2, 3):
        x = torch.tensor([2.0, 0.0, 1.0][:n])[:, None]
        D = distance_matrix([(x, 0)])
        assert D.shape == (n, n)
        perm = order_channels([(x, 0)], solver=solver)
        assert is_permutation(perm, n)
        assert total_variation(permuted([(x, 0)], perm)) == [0.0, 2.0, 2.0][n - 1]
    empty = torch.zeros(0, 0, dtype=torch.float64)
    assert solve_path(empty).numel() == 0 and greedy_path(empty).numel() == 0


@needs_fast_tsp
def test_fast_tsp_on_a_bigger_group_never_worse_than_identity():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(300, 50, generator=gen) * torch.rand(300, 1, generator=gen)
    D = distance_matrix([(w, 0)])
    perm = solve_path(D, solver="fast_tsp", time_limit=0.1)
    assert is_permutation(perm, 300)
    assert path_length(D, perm) < path_length(D, greedy_path(D)) < path_length(D, torch.arange(300))


# ---------------------------------------------------------------------------------------------
# the integer matrix handed to fast_tsp
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_integer_matrix_resolution_and_range(scale):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 300, generator=gen, dtype=torch.float64) * scale
    D = distance_matrix([(x, 0)]).numpy()
    S = _integer_matrix(D)
    n = len(D)
    assert S.shape == (n + 1, n + 1) and S.dtype == np.int64
    assert S.min() == 0 and S.max() == 65535  # the full uint16 range, no overflow
    assert (S == S.T).all() and (np.diag(S) == 0).all()
    assert (S[n] == 0).all()  # the dummy that turns a tour into an open path
    # affine in D off the diagonal, up to rounding: path lengths keep their order
    off = ~np.eye(n, dtype=bool)
    lo, hi = D[off].min(), D[off].max()
    assert np.abs((D - lo) / (hi - lo) * 65535 - S[:n, :n])[off].max() <= 0.5 + 1e-6


def test_integer_matrix_of_equal_distances():
    S = _integer_matrix(np.ones((4, 4)) - np.eye(4))
    assert (S == 0).all()


# ---------------------------------------------------------------------------------------------
# greedy baseline
# ---------------------------------------------------------------------------------------------
@settings(max_examples=30)
@given(groups(min_n=2, max_n=30), st.data())
def test_greedy_path_is_nearest_neighbour(members, data):
    D = distance_matrix(members)
    n = D.shape[0]
    start = data.draw(st.integers(0, n - 1))
    p = greedy_path(D, start=start)
    assert is_permutation(p, n) and int(p[0]) == start
    for k in range(n - 1):
        rest = p[k + 1:]
        assert float(D[p[k], p[k + 1]]) == float(D[p[k], rest].min())


# ---------------------------------------------------------------------------------------------
# applying a permutation to a network
# ---------------------------------------------------------------------------------------------
def test_permuting_coupled_layers_keeps_the_function():
    torch.manual_seed(0)
    a, b = nn.Linear(10, 48), nn.Linear(48, 6)
    net = nn.Sequential(a, nn.ReLU(), b)
    x = torch.randn(32, 10)
    want = net(x)
    members = [(a.weight, 0), (a.bias, 0), (b.weight, 1)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    perm = order_channels(members)
    assert not torch.equal(perm, torch.arange(48))  # something did move
    wa, ba, wb = apply_permutation(members, perm)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # inputs untouched
    a2, b2 = nn.Linear(10, 48), nn.Linear(48, 6)
    with torch.no_grad():
        a2.weight.copy_(wa), a2.bias.copy_(ba), b2.weight.copy_(wb), b2.bias.copy_(b.bias)
    got = nn.Sequential(a2, nn.ReLU(), b2)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert total_variation([(wa, 0), (ba, 0), (wb, 1)]) < total_variation(members)


def test_mixed_dtypes_use_the_widest():
    a = torch.tensor([0.0, 1.0, 2.0])
    b = torch.tensor([[0.0], [1e-12], [2e-12]], dtype=torch.float64)
    D = distance_matrix([(a, 0), (b, 0)])
    assert float(D[0, 1]) == 1.0 + 1e-12  # float64 throughout: the tiny member is not lost


def test_apply_permutation_follows_each_members_dim():
    t = torch.arange(24.0).view(2, 3, 4)
    perm = torch.tensor([2, 0, 1])
    (out,) = apply_permutation([(t, 1)], perm)
    assert torch.equal(out, t[:, perm])
    (out,) = apply_permutation([(t, -2)], perm)
    assert torch.equal(out, t[:, perm])


# ---------------------------------------------------------------------------------------------
# input checks and defaults
# ---------------------------------------------------------------------------------------------
def test_errors_say_what_and_the_numbers():
    with pytest.raises(ValueError, match="member 1 has 5 channels along dim 0.*member 0 has 4"):
        total_variation([(torch.zeros(4, 2), 0), (torch.zeros(5), 0)])
    with pytest.raises(ValueError, match="at least one"):
        distance_matrix([])
    with pytest.raises(ValueError, match=r"dim must be in \[-2, 1\], got 2"):
        total_variation([(torch.zeros(4, 2), 2)])
    with pytest.raises(ValueError, match="not a permutation"):
        apply_permutation([(torch.zeros(3), 0)], torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="not a permutation"):
        apply_permutation([(torch.zeros(3), 0)], torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="length 3"):
        apply_permutation([(torch.zeros(3), 0)], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="square"):
        solve_path(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="symmetric"):
        solve_path(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [5.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="solver"):
        solve_path(torch.zeros(3, 3), solver="2opt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time_limit"):
        solve_path(torch.zeros(3, 3), time_limit=0)


def test_default_time_limit_scales_with_the_group():
    sizes = [1, 64, 256, 512, 1024, 2048, 10_000]
    limits = [default_time_limit(n) for n in sizes]
    assert limits == sorted(limits) and 0 < limits[0] and limits[-1] <= 1.0
    # a ResNet-50 (about 40 groups, 64..2048 channels) gets a few seconds of search in all
    resnet50 = [64] * 7 + [128] * 8 + [256] * 13 + [512] * 7 + [1024, 2048]
    assert sum(map(default_time_limit, resnet50)) < 10
    assert math.isclose(default_time_limit(2048), 1.0)


def test_huge_group_sampled_distances_and_greedy_path(monkeypatch):
    """Above MAX_DISTANCE_WORK the distances come from a seeded sample of the values and the path
    is the nearest-neighbour one: the same order on every call, never a longer total variation,
    and on smooth-but-shuffled channels nearly all the smoothness is found again."""
    import torchinn.model.permute as P

    g = torch.Generator().manual_seed(0)
    n, k = 64, 200
    smooth = torch.linspace(0, 1, n)[:, None] * torch.randn(1, k, generator=g) + 0.01 * torch.randn(n, k, generator=g)
    shuffled = smooth[torch.randperm(n, generator=g)]
    members = [(shuffled, 0)]
    monkeypatch.setattr(P, "MAX_DISTANCE_WORK", n * (n - 1) // 2 * 20)  # 20 of the 200 values
    a, b = P.order_channels(members), P.order_channels(members)
    assert torch.equal(a, b)
    after = P.total_variation([(t, 0) for t in P.apply_permutation(members, a)])
    assert after < 0.2 * P.total_variation(members)
    assert after < 1.3 * P.total_variation([(smooth, 0)])
