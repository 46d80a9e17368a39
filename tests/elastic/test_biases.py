"""Deployed sizes of kind ``"scales-bias"``: the scales and a per-size correction of the bias of
every layer that reads a resized group (:mod:`torchinn.elastic.biases`): the closed form on a
small linear case, the full size exact, ``to_discrete`` folding the corrections, and the
``.inn`` round trip and its checks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import torchinn as inn
from small_nets import rel_error, small_data, small_net
from torchinn.elastic import ElasticNetwork
from torchinn.elastic.biases import fit_biases
from torchinn.io import FormatError
from torchinn.model.groups import module_key


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, data = small_net(), small_data()
        elastic, report = inn.make_elastic(net, data[0], data, steps=40, deploy=[0.25, 0.5],
                                           deploy_kind="scales-bias", ranking="activation")
    finally:
        torch.set_num_threads(threads)
    return net, elastic, report


def test_the_closed_form_is_the_mean_of_what_the_removed_channels_fed_the_layer():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    data = [torch.randn(32, 4, dtype=torch.float64) + 0.5 for _ in range(3)]
    order = [5, 2, 7, 0, 1, 3, 6, 4]
    elastic = ElasticNetwork(inn.convert(net, data[0], inn.ConvertConfig(permute=False)), {"0.weight:0": order})
    elastic.deploy([0.5], kind="scales-bias")
    k = elastic.deployed[0.5].sizes["0.weight:0"]
    assert 0 < k < 8
    fitted = fit_biases(elastic, data)
    assert sorted(fitted[0.5]) == ["2.bias"]   # the first layer reads the inputs, not a resized group
    removed = torch.tensor(sorted(order[k:]))
    with torch.no_grad():
        x = torch.relu(net[0](torch.cat(data)))
        expected = net[2].weight[:, removed] @ x[:, removed].mean(0)
    got = elastic.deployed[0.5].biases["2.bias"]
    assert got.shape == (3,) and float(expected.abs().max()) > 0.1
    assert torch.allclose(got.double(), expected, atol=1e-6), (got, expected)
    # at the deployed size the network's mean output is the full network's
    elastic.resize(target=0.5)
    with torch.no_grad():
        assert torch.allclose(elastic(torch.cat(data)).mean(0), net(torch.cat(data)).mean(0), atol=1e-6)
    elastic.resize(1.0)
    assert len(elastic.imodel.offsets) == 0


def test_the_corrections_lower_the_error_and_the_full_size_stays_exact(trained):
    net, elastic, report = trained
    unseen = torch.cat(small_data(4, seed=7))
    assert report.deploy_kind == "scales-bias" and report.lr == 0.0
    for t, d in elastic.deployed.items():
        assert d.kind == "scales-bias" and sorted(d.biases) == ["2.bias", "4.bias"]
        elastic.resize(target=t)
        assert elastic.active_deployed() == t and len(elastic.imodel.offsets) == 2
        corrected = rel_error(elastic, net, unseen)
        with torch.no_grad():
            saved = {n: b.detach().clone() for n, b in d.biases.items()}
            for b in d.biases.values():
                b.zero_()
            elastic.imodel.clear_samples()
            uncorrected = rel_error(elastic, net, unseen)
            for n, b in d.biases.items():
                b.copy_(saved[n])
            elastic.imodel.clear_samples()
        # measured (unseen inputs): 25%: 0.409 without the corrections -> 0.310; 50%: 0.171 -> 0.128
        # (kind "scales", the same 40 steps: 0.341 and 0.141)
        assert corrected < 0.9 * uncorrected, (t, corrected, uncorrected)
    elastic.resize(1.0)
    assert len(elastic.imodel.offsets) == 0
    assert report.full_error_after == 0.0 and rel_error(elastic, net, unseen) < 1e-10


def test_to_discrete_folds_the_corrections_into_the_plain_biases(trained):
    net, elastic, _ = trained
    x = small_data(1, seed=5)[0]
    try:
        elastic.resize(target=0.25)
        plain = elastic.to_discrete()
        assert type(plain) is nn.Sequential
        d = elastic.deployed[0.25]
        with torch.no_grad():
            out, ref = plain(x), elastic(x)
            assert float((out - ref).abs().max()) < 1e-5 * float(ref.abs().max())
            assert torch.allclose(plain[4].bias, net[4].bias + d.biases["4.bias"], atol=1e-6)
    finally:
        elastic.resize(1.0)


def test_save_and_load_keep_the_corrections_and_a_tampered_file_is_refused(tmp_path, trained):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, elastic, _ = trained
    x = small_data(1, seed=5)[0]
    elastic.resize(target=0.5)
    with torch.no_grad():
        ref = elastic(x)
    inn.save(elastic, tmp_path / "e.inn")
    with pytest.raises(TypeError, match=r"^this integral model carries a deployed size's bias corrections"):
        inn.save(elastic.imodel, tmp_path / "i.inn")
    elastic.resize(1.0)
    again = inn.load(tmp_path / "e.inn")
    assert again.active_deployed() == 0.5
    with torch.no_grad():
        assert torch.equal(again(x), ref)
        again.resize(target=0.25)
        elastic.resize(target=0.25)
        assert torch.equal(again(x), elastic(x))
    elastic.resize(1.0)
    with safe_open(str(tmp_path / "e.inn"), framework="pt") as f:
        meta = json.loads(f.metadata()["torchinn"])
    tensors = load_file(str(tmp_path / "e.inn"))
    entry = meta["elastic"]["deployed"][0]
    assert entry["kind"] == "scales-bias" and entry["biases"] == ["2.bias", "4.bias"]

    def refused(meta: dict, tensors: dict, match: str) -> None:
        save_file(tensors, str(tmp_path / "bad.inn"), metadata={"torchinn": json.dumps(meta)})
        with pytest.raises(FormatError, match=match):
            inn.load(tmp_path / "bad.inn", verify=False)

    key = "e/0/offset/4.bias"
    refused(meta, dict(tensors, **{key: torch.zeros(7)}),
            r"elastic.deployed\[0\].biases\['4.bias'\]: e/0/offset/4.bias must hold finite floats of shape \(8,\)")
    refused(meta, {k: v for k, v in tensors.items() if k != key}, rf"the file has no tensor '{key}'")
    bad = json.loads(json.dumps(meta))
    bad["elastic"]["deployed"][0]["biases"] = ["2.bias", "4.bias", "9.bias"]
    refused(bad, dict(tensors, **{"e/0/offset/9.bias": torch.zeros(8)}),
            r"elastic.deployed\[0\].biases names '9.bias', not a tensor of the model")


def test_the_integral_model_alone_with_corrections_is_not_saved(tmp_path):
    net, data = small_net(), small_data(3)
    elastic = ElasticNetwork(inn.convert(net, (data[0],)), {})
    elastic.imodel.offsets[module_key("4.bias")] = nn.Parameter(torch.zeros(8))
    with pytest.raises(TypeError, match=r"^this integral model carries a deployed size's bias corrections"):
        inn.save(elastic.imodel, tmp_path / "i.inn")


def test_the_scale_fit_recovers_the_multiplier_of_a_removed_duplicate_channel():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    c = torch.tensor([0.5, -0.25, 2.0, 1.0], dtype=torch.float64)
    with torch.no_grad():   # channels 4-7 copy channels 0-3, and the next layer reads each copy c_j times as much
        net[0].weight[4:] = net[0].weight[:4]
        net[0].bias[4:] = net[0].bias[:4]
        net[2].weight[:, 4:] = net[2].weight[:, :4] * c
    data = [torch.randn(64, 4, dtype=torch.float64) for _ in range(3)]
    elastic = ElasticNetwork(inn.convert(net, data[0], inn.ConvertConfig(permute=False)),
                             {"0.weight:0": [0, 1, 2, 3, 4, 5, 6, 7]})
    elastic.deploy([0.53], kind="scales-bias")
    assert elastic.deployed[0.53].sizes == {"0.weight:0": 4}
    fit_biases(elastic, data, scales=True)
    d = elastic.deployed[0.53]
    scales = d.partitions["0.weight:0"].scales().detach()
    # the exact multipliers are 1 + c; the ridge (1e-3 of the mean diagonal) pulls them towards 1 by < 1%
    assert torch.allclose(scales, 1 + c, rtol=0, atol=0.02), scales
    assert float(d.biases["2.bias"].detach().abs().max()) < 0.02   # nothing is left for the bias
    elastic.resize(target=0.53)
    with torch.no_grad():
        x = torch.randn(32, 4, dtype=torch.float64)
        assert float((elastic(x) - net(x)).abs().max()) < 0.05 * float(net(x).abs().max())
    elastic.resize(1.0)


def test_fit_scales_without_deployed_bias_corrections_is_refused():
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    data = [torch.randn(8, 8) for _ in range(4)]
    with pytest.raises(ValueError, match="fit_scales=True .* deploy_kind='scales-bias'.*deploy_kind='scales'"):
        inn.make_elastic(net, data[0], data, steps=1, deploy=[0.5], fit_scales=True)
    with pytest.raises(ValueError, match="fit_scales=True .* deploy=None"):
        inn.make_elastic(net, data[0], data, steps=1, fit_scales=True)
    with pytest.raises(TypeError, match="fit_scales must be True or False, got 'yes'"):
        inn.make_elastic(net, data[0], data, steps=1, deploy=[0.5], deploy_kind="scales-bias", fit_scales="yes")
