"""Channel rounding to multiples: the allowed sizes (hypothesis), resize / choose_sizes / compress
with ``multiple``, the latency metric on rounded sizes, and ``compress --multiple`` on the command line."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchinn as inn
from torchinn.compression import budget, cost
from torchinn.compression.budget import choose_sizes
from torchinn.sizing.metrics import count_flops
from torchinn.cli.main import main
from torchinn.sizing.rounding import ceil_size, floor_size, round_size
from torchinn_demo.zoo import ZOO

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = inn.ConvertConfig(permute=False)


def odd(n: int) -> bool:  # the sizes Simpson's rule allows
    return n % 2 == 1


def allowed(max_size: int, m: int, allows=None) -> list[int]:
    """The allowed sizes, by brute force."""
    return [s for s in range(1, max_size + 1)
            if (s % m == 0 or s == max_size) and (allows is None or allows(s) or s == max_size)]


@given(max_size=st.integers(1, 300), m=st.integers(1, 40), size=st.integers(1, 300), is_odd=st.booleans())
def test_round_size_is_the_nearest_allowed_size(max_size, m, size, is_odd):
    allows = odd if is_odd else None
    if is_odd and max_size % 2 == 0:  # Simpson's groups have odd full sizes
        max_size += 1
    size = min(size, max_size)
    ok = allowed(max_size, m, allows)
    r = round_size(size, max_size, m, allows)
    assert r in ok
    assert r % m == 0 or r == max_size  # a multiple, or the full size
    assert r >= min(m, max_size)  # never below the multiple (unless the group is smaller)
    best = min(abs(s - size) for s in ok)
    assert abs(r - size) == best
    if size - best in ok and size + best in ok:  # a tie goes up
        assert r == size + best
    lo, hi = floor_size(size, max_size, m, allows), ceil_size(size, max_size, m, allows)
    assert lo == max((s for s in ok if s <= size), default=None)
    assert hi == min(s for s in ok if s >= size)


@given(max_size=st.integers(1, 300), m=st.integers(1, 40), a=st.integers(1, 300), b=st.integers(1, 300))
def test_round_size_is_monotone(max_size, m, a, b):
    a, b = sorted((min(a, max_size), min(b, max_size)))
    assert round_size(a, max_size, m) <= round_size(b, max_size, m)


@given(max_size=st.integers(1, 300), size=st.integers(1, 300))
def test_multiple_one_keeps_every_size(max_size, size):
    size = min(size, max_size)
    assert round_size(size, max_size, 1) == floor_size(size, max_size, 1) == ceil_size(size, max_size, 1) == size


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 100), nn.ReLU(), nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 40),
                         nn.ReLU(), nn.Linear(40, 10)).eval()


X = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))


def rounded(sizes: dict, imodel: inn.IntegralModel, m: int) -> bool:
    return all(s % m == 0 or s == imodel.groups[n].max_size for n, s in sizes.items())


def test_resize_rounds_ratios_and_sizes():
    imodel = inn.convert(mlp(), (X,), FAST)
    assert imodel.resize(0.5, multiple=8) == {"0.weight:0": 48, "2.weight:0": 32, "4.weight:0": 24}  # 50, 32, 20
    assert imodel.resize({"0": 99, "2.weight:0": 3}, multiple=16) == {
        "0.weight:0": 100, "2.weight:0": 16, "4.weight:0": 24}  # 99 -> full 100 (nearer than 96)
    assert imodel.resize(0.3, multiple={"4": 16}) == {"0.weight:0": 30, "2.weight:0": 19, "4.weight:0": 16}
    assert inn.resize(imodel, 0.5, multiple=1) == imodel.resize(0.5)  # multiple=1: as before
    small = imodel.to_discrete()
    assert small.get_parameter("0.weight").shape[0] == 50
    p = inn.maths.UniformPartition(64)
    net = inn.from_scratch(nn.Sequential(inn.nn.IntegralLinear(8, p), nn.ReLU(), inn.nn.IntegralLinear(p, 2)),
                           torch.randn(2, 8))
    assert inn.resize(net, 0.3, multiple=16) == {"0.weight:0": 16}  # 19 -> 16
    assert inn.resize(net, 0.4, multiple=16) == {"0.weight:0": 32}  # 26 -> 32


def test_resize_rounds_simpson_groups_to_odd_sizes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 33), nn.ReLU(), nn.Linear(33, 2)).eval()
    imodel = inn.convert(net, (torch.randn(2, 4),), inn.ConvertConfig(permute=False, quadrature="simpson"))
    assert imodel.resize(0.5, multiple=3) == {"0.weight:0": 15}  # 16 -> 15 (18 is even)
    assert imodel.resize(0.5, multiple=8) == {"0.weight:0": 33}  # no odd multiple of 8: full size


@pytest.mark.parametrize("m", [1, 3])
def test_choose_sizes_keeps_simpson_sizes_odd(m):
    """Simpson's rule takes odd sizes only: choose_sizes searches those (it used to fail measuring
    the sensitivities at even sizes, and its sizes could be even)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 33), nn.ReLU(), nn.Linear(33, 65), nn.ReLU(), nn.Linear(65, 4)).eval()
    imodel = inn.convert(net, (X,), inn.ConvertConfig(permute=False, quadrature="simpson"))
    for method in ("sensitivity", "uniform"):
        sizes = choose_sizes(imodel, 0.5, example_inputs=(X,), method=method, multiple=m)
        assert all(s % 2 == 1 and (s % m == 0 or s == imodel.groups[n].max_size) for n, s in sizes.items()), sizes
        assert imodel.num_parameters(sizes) <= 0.5 * imodel.num_parameters()
        imodel.resize(sizes)  # allowed sizes
        imodel.resize(1.0)


@pytest.mark.parametrize("method", ["sensitivity", "uniform"])
@pytest.mark.parametrize("m", [8, 16])
@pytest.mark.parametrize("target", [0.3, 0.6])
def test_choose_sizes_meets_params_target_with_multiples(method, m, target):
    imodel = inn.convert(mlp(), (X,), FAST)
    sizes = choose_sizes(imodel, target, example_inputs=(X,), method=method, multiple=m)
    assert rounded(sizes, imodel, m), sizes
    assert imodel.num_parameters(sizes) <= target * imodel.num_parameters(imodel.sizes())
    imodel.resize(sizes)
    assert sum(p.numel() for p in imodel.to_discrete().parameters()) == imodel.num_parameters(sizes)
    # nothing bigger that is allowed fits: each group one allowed size up is over the budget
    # (uniform: one ratio for all, so only the sensitivity sizes are this tight)
    if method == "sensitivity":
        budget_ = target * imodel.num_parameters({n: g.max_size for n, g in imodel.groups.items()})
        for n, s in sizes.items():
            if s < imodel.groups[n].max_size:
                up = ceil_size(s + 1, imodel.groups[n].max_size, m)
                assert imodel.num_parameters(dict(sizes, **{n: up})) > budget_


def test_choose_sizes_flops_and_per_group_multiples():
    imodel = inn.convert(mlp(), (X,), FAST)
    full = count_flops(imodel.to_discrete(), (X,))
    sizes = choose_sizes(imodel, 0.5, "flops", example_inputs=(X,), multiple={"0": 16, "2.weight:0": 8})
    assert sizes["0.weight:0"] % 16 == 0 and sizes["2.weight:0"] % 8 == 0
    imodel.resize(sizes)
    assert count_flops(imodel.to_discrete(), (X,)) <= 0.5 * full * 1.02


def test_multiple_one_gives_todays_sizes():
    """The sizes choose_sizes gave before ``multiple`` existed (recorded on main)."""
    torch.manual_seed(0)
    model, inputs = ZOO["resnet_basic"]()
    imodel = inn.convert(model, inputs, FAST)
    assert list(choose_sizes(imodel, 0.5, example_inputs=inputs, method="sensitivity", multiple=1).values()) == [
        8, 7, 6, 6, 9, 2, 14, 15]
    assert list(choose_sizes(imodel, 0.5, "flops", example_inputs=inputs, method="uniform").values()) == [
        6, 5, 5, 9, 8, 9, 14, 15]
    torch.manual_seed(0)
    model, inputs = ZOO["vit_timm"]()
    imodel = inn.convert(model, inputs, FAST)
    # (the attention groups are whole heads, 3 of 8 channels each, since heads became groups)
    assert list(choose_sizes(imodel, 0.5, example_inputs=inputs, method="uniform", multiple=1).values()) == [
        16, 2, 25, 2, 24]
    # with multiples of 4 the same networks get other, rounded sizes that still meet the target
    sizes = choose_sizes(imodel, 0.5, example_inputs=inputs, method="uniform", multiple=4)
    assert rounded(sizes, imodel, 4) and sizes != dict(zip(sizes, [16, 2, 25, 2, 24]))
    assert imodel.num_parameters(sizes) <= 0.5 * imodel.num_parameters()


def test_latency_is_timed_on_rounded_sizes(monkeypatch):
    """choose_sizes(metric="latency") times the discrete network at the rounded sizes it searches."""
    timed = []

    def fake_latency(model, inputs, **kw):  # deterministic: proportional to the FLOPs
        timed.append([p.shape[0] for n, p in model.named_parameters() if n.endswith("weight")][:3])
        return count_flops(model, inputs) * 1e-9

    monkeypatch.setattr(cost, "measure_latency", fake_latency)
    imodel = inn.convert(mlp(), (X,), FAST)
    sizes = choose_sizes(imodel, 0.4, "latency", example_inputs=(X,), method="uniform", multiple=16)
    assert rounded(sizes, imodel, 16)
    assert len(timed) >= 2 and timed[0] == [100, 64, 40]  # the full network, then the candidates
    assert all(s % 16 == 0 or s in (100, 64, 40) for row in timed[1:] for s in row), timed


def test_compress_rounds_chosen_and_given_sizes():
    model = mlp()
    small, report = inn.compress(model, (X,), 0.4, tune=False, multiple=8, reconstruct=False)
    after = {n: a for n, (_, a) in report.sizes.items()}
    assert all(a % 8 == 0 or a == b for b, a in report.sizes.values()), report.sizes
    assert report.after <= 0.4 * report.before and report.after == sum(p.numel() for p in small.parameters())
    assert small.get_parameter("0.weight").shape[0] == after["0.weight:0"]
    assert report.multiple == {n: 8 for n in report.sizes} and "multiples of 8" in str(report)
    _, report = inn.compress(model, (X,), 0.4, tune=False, sizes={"0": 50, "2": 30, "4": 21}, multiple=16,
                             reconstruct=False)
    assert {n: a for n, (_, a) in report.sizes.items()} == {"0.weight:0": 48, "2.weight:0": 32, "4.weight:0": 16}
    _, report = inn.compress(model, (X,), 0.4, tune=False, sizes={"0": 50}, reconstruct=False)
    assert report.sizes["0.weight:0"] == (100, 50) and report.multiple == {}


WIDE_SOURCE = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 40, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 5)).eval()
'''


def test_cli_compress_multiple(tmp_path, capsys, monkeypatch):
    (tmp_path / "widenet_round.py").write_text(WIDE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "small.pt"
    code = main(["compress", "widenet_round:build", "--input-shape", "2,3,8,8", "--target", "0.5", "--seconds", "0",
                 "--multiple", "8", "--no-reconstruct", "--no-progress", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "small.pt.report.json").read_text())
    sizes = {n: a for n, (_, a) in report["sizes"].items()}
    assert all(s % 8 == 0 for s in sizes.values()) and sizes != {"0.weight:0": 24, "2.weight:0": 40}, sizes
    assert report["multiple"] == {"0.weight:0": 8, "2.weight:0": 8}
    assert report["after"] <= 0.5 * report["before"]
    small = torch.load(out, weights_only=False)
    assert small.get_parameter("0.weight").shape[0] == sizes["0.weight:0"]
    assert small.get_parameter("2.weight").shape[0] == sizes["2.weight:0"]
    assert "sizes in multiples of 8" in text


@pytest.mark.parametrize("value, message", [("0", "must be >= 1 (1: no rounding), got 0"),
                                            ("-8", "must be >= 1 (1: no rounding), got -8"),
                                            ("8.5", "whole number of channels >= 1 like 8, got '8.5'")])
def test_cli_rejects_bad_multiple(tmp_path, capsys, value, message):
    with pytest.raises(SystemExit) as e:
        main(["compress", "x:y", "--input-shape", "2,3,8,8", "--target", "0.5", "--multiple", value,
              "-o", str(tmp_path / "o.pt")])
    assert e.value.code == 2
    assert "argument --multiple" in (err := capsys.readouterr().err) and message in err, err


@pytest.mark.parametrize("bad", [0, -8, True, 8.0, {"0": 0}, {"0": False}])
def test_bad_multiples(bad):
    imodel = inn.convert(mlp(), (X,), FAST)
    with pytest.raises(ValueError, match=r"must be an int >= 1 .*got"):
        imodel.resize(0.5, multiple=bad)
    with pytest.raises(ValueError, match=r"must be an int >= 1 .*got"):
        choose_sizes(imodel, 0.5, multiple=bad)
    assert imodel.sizes() == {"0.weight:0": 100, "2.weight:0": 64, "4.weight:0": 40}  # nothing changed
    if not isinstance(bad, dict):
        with pytest.raises(ValueError, match=r"multiple must be an int >= 1"):
            inn.compress(mlp(), (X,), 0.5, tune=False, multiple=bad)


def test_unreachable_with_multiples_says_so():
    imodel = inn.convert(mlp(), (X,), FAST)
    with pytest.raises(budget.UnreachableTarget, match=r"min_ratio=0\.1, multiple=64\)"):
        choose_sizes(imodel, 0.2, method="uniform", multiple=64)  # every group 64 or full: too big
