"""`torchinn demo` (the tour): the shipped digits ResNet, each story end to end on the quick
setting, table shapes, plots as valid PNGs, and the command line."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mlxtend")
pytest.importorskip("sklearn")
pytest.importorskip("skimage")
pytest.importorskip("matplotlib")

import matplotlib.image  # noqa: E402

from torchinn.cli import main as cli  # noqa: E402
from torchinn_demo import plots  # noqa: E402
from torchinn_demo.data import load_digits  # noqa: E402
from torchinn_demo import tour  # noqa: E402
from torchinn_demo.digits import accuracy  # noqa: E402
from torchinn_demo.models import DigitsResNet, load_resnet_digits  # noqa: E402


def _is_png(path) -> None:
    assert path.exists() and path.suffix == ".png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


# -- the shipped ResNet ------------------------------------------------------------------------

def test_shipped_resnet_loads_and_scores_98_percent():
    net, meta = load_resnet_digits()
    assert isinstance(net, DigitsResNet) and not net.training
    assert sum(p.numel() for p in net.parameters()) == meta["params"] < 200_000
    data = load_digits(1000, 0)
    acc = accuracy(net, data.x_test, data.y_test)
    assert acc >= 0.98
    assert acc == pytest.approx(meta["heldout_accuracy"], abs=1e-4)
    assert meta["train_seconds"] > 0 and meta["epochs"] >= 1


def test_resnet_shapes_and_validation():
    net = DigitsResNet(widths=(4, 8), blocks=(1, 2))
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="block count"):
        DigitsResNet(widths=(4, 8), blocks=(1,))


# -- the stories --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    cfg = tour.TourConfig.quick(out=out, progress=False)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    res = {r.name: r for r in tour.run(tour.STORIES, cfg)}
    assert torch.equal(torch.rand(3), expected)  # the global RNG is left alone
    return res, out


def test_classification_story_table(results):
    r = results[0]["classification"]
    t = r.table
    assert t.columns[:2] == ["parameters removed", "parameters"]
    assert t.columns[2] == "INN, no tuning" and t.columns[3].startswith("INN + grid tuning (0.3 s)")
    assert t.columns[4:6] == ["L1 pruning", "random pruning"] and t.columns[6].startswith("images/s")
    assert [row[0] for row in t.rows] == ["0% (original)", "50%"]
    assert all(len(row) == len(t.columns) for row in t.rows)
    level = r.data["levels"][0]
    assert set(level["acc"]) == {"inn", "inn_tuned", "l1", "random"}
    assert all(0.0 <= a <= 1.0 for a in level["acc"].values())
    assert 0.45 < level["params"] / r.data["params"] <= 0.5
    assert level["tuning"]["steps"] >= 1 and "steps)" in t.rows[1][3]
    md = t.markdown().splitlines()
    assert len(md) == 2 + len(t.rows) and len({len(line) for line in md}) == 1


def test_superres_story_table(results):
    r = results[0]["superres"]
    t = r.table
    assert t.columns[0] == "inner channels removed" and t.columns[-2:] == ["speed 16x16", "speed 32x32"]
    assert [row[0] for row in t.rows] == ["0% (original)", "bicubic (no network)", "50% (64 -> 32)"]
    q = r.data["levels"][0]["quality"]
    assert set(q) == {"inn", "inn_tuned", "l1", "random"}
    assert all(20 < v["psnr"] < 60 and 0 < v["ssim"] <= 1 for v in q.values())
    assert r.data["original"]["psnr"] > r.data["bicubic"]["psnr"]
    assert set(r.data["speed"]) == {16, 32}
    assert r.data["speed"][16]["50%"] > 0


def test_plots_are_written_as_png(results):
    res, out = results
    names = {p.name for r in res.values() for p in r.plots}
    assert names == {"classification_accuracy.png", "permutation.png", "feature_maps_digits.png",
                     "superres_psnr.png", "superres.png", "feature_maps_edsr.png"}
    for r in res.values():
        for p in r.plots:
            assert p.parent == out
            _is_png(p)


def test_config_validates():
    with pytest.raises(ValueError, match="levels"):
        tour.TourConfig(levels=(0.5, 1.0))
    with pytest.raises(ValueError, match="tune_seconds"):
        tour.TourConfig(tune_seconds=0)
    with pytest.raises(ValueError, match="unknown stories"):
        tour.run(["scratch"], tour.TourConfig.quick())


# -- plots on their own -------------------------------------------------------------------------

def test_plot_helpers(tmp_path):
    smooth = torch.linspace(0, 1, 16)[:, None].expand(16, 9).clone()
    rough = smooth[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    assert plots.row_variation(smooth) < plots.row_variation(rough)
    _is_png(plots.permutation(tmp_path / "p.png", rough.reshape(16, 1, 3, 3), smooth.reshape(16, 1, 3, 3)))
    maps = torch.linspace(0, 1, 8)[:, None, None] * torch.rand(1, 10, 10)
    assert plots.neighbour_distance(maps) < plots.neighbour_distance(maps[[0, 7, 1, 6, 2, 5, 3, 4]])
    _is_png(plots.feature_maps(tmp_path / "f.png", maps, maps))
    _is_png(plots.side_by_side(tmp_path / "s.png", {"a": torch.rand(3, 20, 20), "b": torch.rand(20, 20)}))
    _is_png(plots.compression_curve(tmp_path / "c.png", [1.0, 0.5], {"INN": [30.0, 29.0]},
                                    references={"bicubic": 28.0}, ylabel="PSNR"))
    with pytest.raises(ValueError, match="2 values for 1"):
        plots.compression_curve(tmp_path / "x.png", [0.5], {"INN": [0.1, 0.2]})


def test_first_conv_output_of_module_and_graph():
    net = DigitsResNet(widths=(4, 8), blocks=(1, 1)).eval()
    x = torch.rand(1, 1, 28, 28)
    a = tour.first_conv_output(net, x)
    assert a.shape == (1, 4, 28, 28)
    gm = torch.fx.symbolic_trace(net)
    assert torch.allclose(tour.first_conv_output(gm, x), a)


# -- command line -------------------------------------------------------------------------------

def test_cli_parses_tour_flags():
    args = cli.build_parser().parse_args(
        ["demo", "--story", "superres", "--levels", "0.25,0.5", "--out", "d", "--tune-seconds", "2",
         "--threads", "2"])
    assert args.story == "superres" and args.levels == (0.25, 0.5) and args.out == "d"
    assert args.tune_seconds == 2.0 and args.threads == 2
    d = cli.build_parser().parse_args(["demo"])
    assert d.story is None and d.levels is None and d.out == "torchinn-demo" and d.tune_seconds is None


@pytest.mark.parametrize("argv", [["demo", "--levels", "1"], ["demo", "--levels", "0"], ["demo", "--story", "x"],
                                  ["demo", "--tune-seconds", "0"]])
def test_cli_rejects_bad_tour_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2


def test_cli_rejects_flags_of_another_story(capsys):
    assert cli.main(["demo", "--widths", "1,0.5"]) == 1
    assert "--story scratch" in capsys.readouterr().err
    assert cli.main(["demo", "--story", "scratch", "--levels", "0.5"]) == 1


def test_cli_classification_quick(tmp_path, capsys):
    assert cli.main(["demo", "--story", "classification", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "INN + grid tuning (0.3 s)" in out and "random pruning" in out and "Plots written to" in out
    assert str(tmp_path.resolve()) in out and "classification_accuracy.png" in out
    _is_png(tmp_path / "classification_accuracy.png")
