"""Deployed sizes of kind ``"scales-refit"``: the scales and bias corrections, then a least-squares
refit of the layers reading resized groups kept as per-size offsets (:mod:`torchinn.elastic.refit`):
the refit lowers the held-out error, the full size stays exact, ``to_discrete`` folds the offsets,
the ``.inn`` round trip, the guard that undoes a refit that does not help, and the bytes reported."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import torchinn as inn
from small_nets import rel_error, small_data, small_net
from torchinn.elastic import ElasticNetwork
from torchinn.elastic.refit import deployed_bytes, refit_deployed
from torchinn.io import FormatError


def _make(kind: str):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, data = small_net(), small_data()
        elastic, report = inn.make_elastic(net, data[0], data, steps=40, deploy=[0.25, 0.5],
                                           deploy_kind=kind, ranking="activation")
    finally:
        torch.set_num_threads(threads)
    return net, elastic, report


@pytest.fixture(scope="module")
def trained():
    return _make("scales-refit")


@pytest.fixture(scope="module")
def without_refit():
    return _make("scales-bias")


def test_the_refit_lowers_the_held_out_error_and_the_full_size_stays_exact(trained, without_refit):
    net, elastic, report = trained
    _, plain, plain_report = without_refit
    unseen = torch.cat(small_data(4, seed=7))
    assert report.deploy_kind == "scales-refit" and report.lr == 0.0
    for t, d in elastic.deployed.items():
        r = report.refit[t]
        assert d.kind == "scales-refit" and r["kept"] and r["layers"] == ["2.weight", "4.weight"], r
        # the refit weights and biases are offsets beside the scales' bias corrections
        assert sorted(d.biases) == ["2.bias", "2.weight", "4.bias", "4.weight"]
        # measured (held-out batches): 25%: 0.279 -> 0.177; 50%: 0.120 -> 0.076
        assert r["error_after"] < 0.8 * r["error_before"], r
        # the same training without the refit (the same steps and seed: the same state before it)
        assert r["error_before"] == pytest.approx(plain_report.deployed[t][2], rel=1e-3)
        assert report.deployed[t][2] == r["error_after"]
        elastic.resize(target=t)
        plain.resize(target=t)
        assert elastic.active_deployed() == t and len(elastic.imodel.offsets) == 4
        refit, before = rel_error(elastic, net, unseen), rel_error(plain, net, unseen)
        # measured (unseen inputs): 25%: 0.310 -> 0.193; 50%: 0.128 -> 0.081
        assert refit < 0.75 * before, (t, refit, before)
        plain.resize(1.0)
    elastic.resize(1.0)
    assert len(elastic.imodel.offsets) == 0
    assert report.full_error_after == 0.0 and rel_error(elastic, net, unseen) < 1e-10
    full, reference = elastic.to_discrete(), inn.convert(net, small_data(1)[0]).to_discrete()
    for name, p in reference.named_parameters():  # the shared weights are the converted ones
        assert torch.equal(full.get_parameter(name), p), name


def test_the_bytes_of_each_size_are_reported(trained):
    _, elastic, report = trained
    assert set(report.deployed_bytes) == {0.25, 0.5}
    for t, d in elastic.deployed.items():
        k2, k4 = d.sizes["0.weight:0"], d.sizes["2.weight:0"]
        # scales (one float per kept channel) + offsets of 2.weight (k4 x k2), 2.bias (k4), 4.weight (8 x k4), 4.bias (8)
        assert report.deployed_bytes[t] == deployed_bytes(d) == 4 * (k2 + k4 + k4 * k2 + k4 + 8 * k4 + 8)
    assert "bytes of its own" in str(report) and "refit: 2 layers" in str(report)


def test_to_discrete_folds_the_refit_into_the_plain_weights(trained):
    net, elastic, _ = trained
    x = small_data(1, seed=5)[0]
    try:
        for t, d in elastic.deployed.items():
            elastic.resize(target=t)
            plain = elastic.to_discrete()
            assert type(plain) is nn.Sequential and plain[2].weight.shape == d.biases["2.weight"].shape
            with torch.no_grad():
                out, ref = plain(x), elastic(x)
                assert float((out - ref).abs().max()) < 1e-5 * float(ref.abs().max())
                keep = torch.sort(elastic.orders["2.weight:0"][:d.sizes["2.weight:0"]]).values
                assert torch.allclose(plain[4].bias, net[4].bias + d.biases["4.bias"], atol=1e-6)
                assert not torch.allclose(plain[4].weight, net[4].weight[:, keep] * d.partitions["2.weight:0"].scales(),
                                          atol=1e-3)
    finally:
        elastic.resize(1.0)


def test_save_and_load_keep_the_refit_and_a_wrong_shape_is_refused(tmp_path, trained):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, elastic, _ = trained
    x = small_data(1, seed=5)[0]
    elastic.resize(target=0.5)
    with torch.no_grad():
        ref = elastic(x)
    inn.save(elastic, tmp_path / "e.inn")
    elastic.resize(1.0)
    again = inn.load(tmp_path / "e.inn")
    assert again.active_deployed() == 0.5
    with torch.no_grad():
        assert torch.equal(again(x), ref)
        again.resize(target=0.25)
        elastic.resize(target=0.25)
        assert torch.equal(again(x), elastic(x))
        assert torch.equal(again.to_discrete(graph=True)(x), elastic.to_discrete(graph=True)(x))
    elastic.resize(1.0)
    with safe_open(str(tmp_path / "e.inn"), framework="pt") as f:
        meta = json.loads(f.metadata()["torchinn"])
    tensors = load_file(str(tmp_path / "e.inn"))
    entry = meta["elastic"]["deployed"][0]
    assert entry["kind"] == "scales-refit" and entry["biases"] == ["2.bias", "2.weight", "4.bias", "4.weight"]
    key = "e/0/offset/4.weight"
    shape = tuple(tensors[key].shape)
    save_file(dict(tensors, **{key: torch.zeros(8, shape[1] + 1)}), str(tmp_path / "bad.inn"),
              metadata={"torchinn": json.dumps(meta)})
    with pytest.raises(FormatError, match=rf"elastic.deployed\[0\].biases\['4.weight'\]: {key} must hold finite floats "
                                          rf"of shape \(8, {shape[1]}\) \(the tensor at this size\), got \(8, {shape[1] + 1}\)"):
        inn.load(tmp_path / "bad.inn", verify=False)


def test_a_refit_that_does_not_lower_the_held_out_error_is_undone():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [torch.randn(64, 4) for _ in range(3)]
    elastic = ElasticNetwork(inn.convert(net, data[0], inn.ConvertConfig(permute=False)), {"0.weight:0": list(range(8))})
    elastic.deploy([0.5], kind="scales-refit")
    errors = iter([1.0, 2.0])  # before, after: the refit made it worse
    done = refit_deployed(elastic, data, error=lambda t: next(errors))
    assert done[0.5]["kept"] is False and done[0.5]["layers"] == []
    assert done[0.5]["why"] == "the held-out error rose (1 -> 2)"
    assert elastic.deployed[0.5].biases == {}
    errors = iter([2.0, 1.0])
    done = refit_deployed(elastic, data, error=lambda t: next(errors))
    assert done[0.5]["kept"] is True and sorted(elastic.deployed[0.5].biases) == ["2.bias", "2.weight"]
    # a network whose resized group is resampled (no ranking) has no full-network counterpart to refit
    uniform = ElasticNetwork(inn.convert(net, data[0], inn.ConvertConfig(permute=False)), {})
    uniform.deploy([0.5], kind="scales-refit")
    done = refit_deployed(uniform, data)
    assert done[0.5]["kept"] is False and "no ranking" in done[0.5]["why"]
