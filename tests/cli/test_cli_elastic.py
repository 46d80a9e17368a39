"""torchinn elastic and torchinn resize, end to end on a tiny network (smoke tests)."""

from __future__ import annotations

import json

import torch

import torchinn as inn
from test_cli import run  # main(argv) -> (exit status, stdout, stderr)

MODULE = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 3, 3, padding=1)).eval()
'''


def test_elastic_then_resize(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tinyelastic.py").write_text(MODULE)
    threads = torch.get_num_threads()
    code, out, err = run(["elastic", "tinyelastic.py:build", "--input-shape", "4,3,12,12", "--steps", "4",
                          "-o", "net.inn"], capsys)
    torch.set_num_threads(threads)
    assert code == 0, err
    assert "smoke test" in err and "elastic: 4 steps" in out and "wrote net.inn" in out
    report = json.loads((tmp_path / "net.inn.report.json").read_text())
    assert report["steps"] == 4 and set(report["quality"]) == {"0.25", "0.5", "0.75", "1.0"}
    net = inn.load(tmp_path / "net.inn")
    assert isinstance(net, inn.elastic.ElasticNetwork) and net.low == 0.25

    code, out, err = run(["resize", "net.inn", "--target", "0.5", "-o", "small.pt"], capsys)
    assert code == 0, err
    small = torch.load(tmp_path / "small.pt", weights_only=False)
    params = sum(p.numel() for p in small.parameters())
    assert f"{params:,} parameters" in out and params <= 0.5 * 3203 and "of 3,203)" in out
    net.resize(target=0.5)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(small(x), net.to_discrete(graph=True)(x), atol=1e-6)

    code, out, err = run(["resize", "net.inn", "--ratio", "0.5", "-o", "half.pt"], capsys)
    assert code == 0 and "'0.weight:0': 8, '2.weight:0': 8" in out

    code, out, err = run(["inspect", "net.inn", "--input-shape", "2,3,12,12"], capsys)  # its integral model
    assert code == 0 and "0.weight:0" in out, err

    code, out, err = run(["resize", "net.inn", "-o", "x.pt"], capsys)
    assert code == 1 and "resize needs one of --target" in err
    code, out, err = run(["elastic", "tinyelastic.py:build", "--input-shape", "4,3,12,12", "--steps", "1",
                          "-o", "net.pt"], capsys)
    assert code == 1 and "give a name ending with .inn" in err
    code, out, err = run(["elastic", "net.inn", "--input-shape", "4,3,12,12", "--steps", "1", "-o", "again.inn"],
                         capsys)
    assert code == 1 and "'net.inn' is an integral model: elastic needs the original network" in err


def test_elastic_with_deployed_sizes_then_resize_at_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tinyelastic.py").write_text(MODULE)
    code, out, err = run(["elastic", "tinyelastic.py:build", "--input-shape", "4,3,12,12", "--steps", "3",
                          "--deploy", "0.4,0.7", "-o", "net.inn"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "net.inn.report.json").read_text())
    assert report["deploy_kind"] == "scales" and report["lr"] == 0.0
    net = inn.load(tmp_path / "net.inn")
    assert sorted(net.deployed) == [0.4, 0.7] and all(d.kind == "scales" for d in net.deployed.values())
    code, out, err = run(["resize", "net.inn", "--target", "0.4", "-o", "small.pt"], capsys)
    assert code == 0, err
    small = torch.load(tmp_path / "small.pt", weights_only=False)
    net.resize(target=0.4)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(small(x), net.to_discrete(graph=True)(x), atol=1e-6)
    for bad in ("0.4,1.5", "0.4,0.4", "half"):
        code, out, err = run(["elastic", "tinyelastic.py:build", "--input-shape", "4,3,12,12", "--steps", "1",
                              "--deploy", bad, "-o", "x.inn"], capsys)
        assert code == 2 and "--deploy" in err, (bad, err)
    code, out, err = run(["elastic", "tinyelastic.py:build", "--input-shape", "4,3,12,12", "--steps", "1",
                          "--deploy", "0.5", "--deploy-kind", "scales-refit", "--tune-share", "1", "-o", "x.inn"], capsys)
    assert code == 2 and "--tune-share must be in [0, 1), got 1" in err, err
    code, out, err = run(["elastic", "tinyelastic.py:build", "--input-shape", "4,3,12,12", "--steps", "1",
                          "--deploy", "0.5", "--tune-share", "0.5", "-o", "x.inn"], capsys)
    assert code != 0 and "tune_share > 0 trains the refit weights of deployed sizes" in err, (code, err)


def test_elastic_with_a_refit_per_deployed_size_then_resize(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tinyelastic.py").write_text(MODULE)
    import torchinn.cli.elastic as cli_elastic
    seen = {}

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return inn.make_elastic(*args, **kwargs)

    monkeypatch.setattr(cli_elastic, "make_elastic", recording)
    code, out, err = run(["elastic", "tinyelastic.py:build", "--input-shape", "4,3,12,12", "--steps", "3",
                          "--deploy", "0.5", "--deploy-kind", "scales-refit", "--tune-share", "0.5", "--deploy-sizes",
                          "best", "--refit-share", "0.6", "-o", "net.inn"], capsys)
    assert code == 0, err
    assert seen["refit_share"] == 0.6 and seen["tune_share"] == 0.5, seen
    saved = json.loads((tmp_path / "net.inn.report.json").read_text())
    assert saved["deployed_sizes"]["0.5"]["method"] in ("curves", "fisher"), saved["deployed_sizes"]
    assert set(saved["deployed_sizes"]["0.5"]["errors"]) <= {"curves", "fisher"}
    assert saved["deploy_kind"] == "scales-refit" and "error_tuned" in saved["refit"]["0.5"], saved["refit"]
    net = inn.load(tmp_path / "net.inn")
    assert [d.kind for d in net.deployed.values()] == ["scales-refit"]
    code, out, err = run(["resize", "net.inn", "--target", "0.5", "-o", "small.pt"], capsys)
    assert code == 0, err
    small = torch.load(tmp_path / "small.pt", weights_only=False)
    net.resize(target=0.5)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():  # the deployed size with its refit offsets, folded into the plain weights
        assert torch.allclose(small(x), net(x), atol=1e-5)
    code, out, err = run(["elastic", "tinyelastic.py:build", "--input-shape", "4,3,12,12", "--steps", "1",
                          "--deploy-kind", "refit", "-o", "x.inn"], capsys)
    assert code == 2 and "invalid choice: 'refit'" in err
    for bad in ("0", "1.5", "nan"):
        code, out, err = run(["elastic", "tinyelastic.py:build", "--input-shape", "4,3,12,12", "--steps", "1",
                              "--deploy", "0.5", "--deploy-kind", "scales-refit", "--refit-share", bad, "-o", "x.inn"],
                             capsys)
        assert code == 2 and f"--refit-share must be in (0, 1], got {bad}" in err, (bad, err)
