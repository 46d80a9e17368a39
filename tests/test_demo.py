"""`torchinn demo`: data loading, the naive channel cut, the demo end to end, and the CLI."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("mlxtend")
pytest.importorskip("sklearn")

from torchinn import from_scratch  # noqa: E402
from torchinn.cli import main as cli  # noqa: E402
from torchinn.cli import args as cli_args
from torchinn_demo.data import load_digits  # noqa: E402
from torchinn_demo import digits  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return load_digits(test_size=1000, seed=0)


# -- data --------------------------------------------------------------------------------------

def test_digits_shapes_ranges_labels(data):
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.y_train.shape == (4000,) and data.y_test.shape == (1000,)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    for x in (data.x_train, data.x_test):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert 0.05 < float(x.mean()) < 0.25  # mostly black background, white strokes
    assert sorted(data.y_train.unique().tolist()) == list(range(10))
    assert sorted(data.y_test.unique().tolist()) == list(range(10))


def test_digits_split_is_stratified_seeded_and_disjoint(data):
    # 500 images per class: a stratified 4000/1000 split keeps 400/100 of each.
    assert torch.bincount(data.y_train, minlength=10).tolist() == [400] * 10
    assert torch.bincount(data.y_test, minlength=10).tolist() == [100] * 10
    again = load_digits(test_size=1000, seed=0)
    assert torch.equal(again.x_test, data.x_test) and torch.equal(again.y_test, data.y_test)
    other = load_digits(test_size=1000, seed=1)
    assert not torch.equal(other.x_test, data.x_test)
    # Train and test together are the whole data set: same multiset of per-image sums.
    both = torch.cat([data.x_train, data.x_test]).flatten(1).sum(1).sort().values
    both_other = torch.cat([other.x_train, other.x_test]).flatten(1).sum(1).sort().values
    assert torch.allclose(both, both_other)


def test_digits_rejects_bad_test_size():
    with pytest.raises(ValueError, match="test_size"):
        load_digits(test_size=0)
    with pytest.raises(ValueError, match="test_size"):
        load_digits(test_size=5000)


# -- the naive cut -----------------------------------------------------------------------------

def test_naive_cut_keeps_the_first_k_channels():
    torch.manual_seed(0)
    net = digits.discrete_cnn((6, 10), 12)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    k0, k1, k2 = 4, 7, 5
    cut = digits.naive_cut(net, [k0, k1, k2])
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    cconvs = [m for m in cut if isinstance(m, nn.Conv2d)]
    lin, clin = net[-1], cut[-1]
    # Out channels of each hidden layer and in channels of the next one, nothing else.
    assert torch.equal(cconvs[0].weight, convs[0].weight[:k0])
    assert torch.equal(cconvs[0].bias, convs[0].bias[:k0])
    assert torch.equal(cconvs[1].weight, convs[1].weight[:k1, :k0])
    assert torch.equal(cconvs[1].bias, convs[1].bias[:k1])
    assert torch.equal(cconvs[2].weight, convs[2].weight[:k2, :k1])
    assert torch.equal(cconvs[2].bias, convs[2].bias[:k2])
    assert torch.equal(clin.weight, lin.weight[:, :k2]) and torch.equal(clin.bias, lin.bias)
    assert digits.hidden_sizes(cut) == [k0, k1, k2]
    # The same function as running the sliced weights by hand.
    x = torch.randn(3, 1, 28, 28)
    h = F.max_pool2d(F.relu(F.conv2d(x, convs[0].weight[:k0], convs[0].bias[:k0], padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, convs[1].weight[:k1, :k0], convs[1].bias[:k1], padding=1)), 2)
    h = F.relu(F.conv2d(h, convs[2].weight[:k2, :k1], convs[2].bias[:k2])).flatten(1)
    expected = F.linear(h, lin.weight[:, :k2], lin.bias)
    with torch.no_grad():
        assert torch.allclose(cut(x), expected, atol=1e-6)
    # The original is untouched.
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert digits.hidden_sizes(net) == [6, 10, 12]


def test_naive_cut_fraction_matches_resize_sizes():
    for ratio in (1.0, 0.75, 0.5, 0.3, 0.25, 0.1):
        inn = from_scratch(digits.integral_cnn((6, 10), 12), torch.zeros(1, 1, 28, 28))
        inn.resize(ratio)
        expected = digits.hidden_sizes(inn.to_discrete())
        assert digits.hidden_sizes(digits.naive_cut(digits.discrete_cnn((6, 10), 12), ratio)) == expected


def test_naive_cut_slices_batchnorm_and_checks_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    net[1].running_mean.normal_()
    cut = digits.naive_cut(net, [5])
    assert torch.equal(cut[1].running_mean, net[1].running_mean[:5])
    assert torch.equal(cut[1].weight, net[1].weight[:5])
    with pytest.raises(ValueError, match="1 hidden layers"):
        digits.naive_cut(net, [2, 2])
    with pytest.raises(ValueError, match=r"in \[1, 8\]"):
        digits.naive_cut(net, [9])
    with pytest.raises(TypeError, match="Sequential"):
        digits.naive_cut(nn.Linear(2, 2), 0.5)


def test_same_shapes_for_both_networks():
    inn, plain = digits.integral_cnn((6, 10), 12), digits.discrete_cnn((6, 10), 12)
    small = from_scratch(inn, torch.zeros(1, 1, 28, 28)).to_discrete()
    assert [type(m) for m in small] == [type(m) for m in plain]
    assert digits.count_params(small) == digits.count_params(plain)


# -- the demo ----------------------------------------------------------------------------------

def test_quick_demo_end_to_end(data):
    result = digits.run(digits.DemoConfig.quick(progress=False), data)
    assert result.columns == digits.COLUMNS
    assert [r["width"] for r in result.rows] == [1.0, 0.5]
    for row in result.rows:
        assert tuple(row) == digits.COLUMNS
        assert row["integral_params"] == row["cut_params"] > 0
        assert 0.0 <= row["integral_acc"] <= 1.0 and 0.0 <= row["cut_acc"] <= 1.0
    assert result.rows[0]["channels"] == [4, 8, 16] and result.rows[1]["channels"] == [2, 4, 8]
    assert result.rows[1]["integral_params"] < result.rows[0]["integral_params"]
    assert result.seconds["total"] > 0
    table = digits.format_table(result)
    assert "integral acc" in table and "naive-cut acc" in table and "100%" in table and "50%" in table


def test_demo_is_reproducible_and_workers_agree(data):
    cfg = digits.DemoConfig.quick(progress=False, epochs=2, widths=(1.0, 0.5, 0.25))
    first = digits.run(cfg, data).rows
    assert digits.run(cfg, data).rows == first
    parallel = digits.DemoConfig.quick(progress=False, epochs=2, widths=(1.0, 0.5, 0.25), workers=2)
    assert digits.run(parallel, data).rows == first


def test_demo_leaves_global_rng_alone(data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    digits.run(digits.DemoConfig.quick(progress=False, train_limit=64, test_size=200), data)
    assert torch.equal(torch.rand(3), expected)


def test_config_validates():
    with pytest.raises(ValueError, match="widths"):
        digits.DemoConfig(widths=(1.0, 0.0))
    with pytest.raises(ValueError, match="epochs"):
        digits.DemoConfig(epochs=0)
    with pytest.raises(ValueError, match="workers"):
        digits.DemoConfig(workers=3)


# -- the command line --------------------------------------------------------------------------

def test_cli_parses_demo_flags():
    args = cli.build_parser().parse_args(
        ["demo", "--quick", "--epochs", "3", "--seed", "7", "--widths", "1,0.5,0.25"])
    assert args.command == "demo" and args.quick and args.epochs == 3 and args.seed == 7
    assert args.widths == (1.0, 0.5, 0.25)
    defaults = cli.build_parser().parse_args(["demo"])
    assert defaults.epochs is None and defaults.widths is None and not defaults.quick


@pytest.mark.parametrize("argv", [[], ["demo", "--widths", "1,2"], ["demo", "--epochs", "0"],
                                  ["demo", "--widths", "a"], ["frobnicate"]])
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2


def test_cli_widths_type():
    assert cli_args.widths("1, 0.5") == (1.0, 0.5)
    with pytest.raises(argparse.ArgumentTypeError):
        cli_args.widths("0")


def test_cli_demo_quick_exits_zero(capsys):
    assert cli.main(["demo", "--story", "scratch", "--quick", "--no-progress", "--widths", "1,0.5"]) == 0
    out = capsys.readouterr().out
    assert "integral acc" in out and "naive-cut acc" in out and "Time:" in out
