"""Deployed sizes of kind ``"scales"`` (the default of ``make_elastic(deploy=...)``): the ranked
top-k points and a trained scale per kept channel (:class:`torchinn.elastic.scaled.ScaledPartition`),
measured against the ranked top-k at the same sizes, folded by ``to_discrete``, and kept exactly
through save / load."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import torchinn as inn
from small_nets import rel_error, small_data, small_net
from torchinn.elastic import ElasticNetwork
from torchinn.elastic.scaled import ScaledPartition
from torchinn.io import FormatError
from torchinn.maths import CompositePartition, UniformPartition


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, data = small_net(), small_data()
        elastic, report = inn.make_elastic(net, data[0], data, steps=80, deploy=[0.25, 0.5],
                                           ranking="activation")
    finally:
        torch.set_num_threads(threads)
    return net, elastic, report


def test_the_scales_lower_the_held_out_error_of_each_deployed_size_and_the_full_size_stays_exact(trained):
    net, elastic, report = trained
    unseen = torch.cat(small_data(4, seed=7))
    assert {t: d.kind for t, d in elastic.deployed.items()} == {0.25: "scales", 0.5: "scales"}
    assert report.deploy_kind == "scales" and f"own scales, {report.deployed_bytes[0.5]:,} bytes of its own): error" in str(report)
    # one float32 scale per kept channel of each group below full size
    assert report.deployed_bytes == {t: 4 * sum(d.partitions[g].size for g in d.partitions) for t, d in elastic.deployed.items()}
    assert report.lr == 0.0   # the default with deployed scales: the shared weights stay the converted ones
    for t, d in elastic.deployed.items():
        assert elastic.resize(target=t) == d.sizes and elastic.active_deployed() == t
        parts = elastic.imodel.partition_map()
        assert all(isinstance(parts[g], ScaledPartition) for g in d.partitions) and d.partitions
        scaled = rel_error(elastic, net, unseen)
        for g, p in d.partitions.items():   # the points are the ranked top-k ones
            assert torch.equal(p.points(), elastic.partition(g, d.sizes[g]).points())
        elastic.set_sizes(d.sizes)          # the same sizes and points, without the scales
        ranked = rel_error(elastic, net, unseen)
        # measured (unseen inputs): 25%: 0.439 ranked -> 0.326 scaled; 50%: 0.186 -> 0.139
        assert scaled < 0.85 * ranked, (t, scaled, ranked)
        _, before, after = report.deployed[t]
        assert after < 0.85 * before, report   # measured 0.387 -> 0.288 at 25%, 0.170 -> 0.124 at 50%
    elastic.resize(1.0)
    assert report.full_error_after == 0.0 and rel_error(elastic, net, unseen) < 1e-10


def test_to_discrete_folds_the_scales_into_the_plain_weights(trained):
    net, elastic, _ = trained
    x = small_data(1, seed=5)[0]
    try:
        elastic.resize(target=0.25)
        plain = elastic.to_discrete()
        assert type(plain) is nn.Sequential
        with torch.no_grad():
            out, ref = plain(x), elastic(x)
            assert float((out - ref).abs().max()) < 1e-5 * float(ref.abs().max())
            elastic.set_sizes(elastic.deployed[0.25].sizes)
            unscaled = elastic.to_discrete()(x)
        assert float((out - unscaled).abs().max()) > 1e-2 * float(ref.abs().max())  # the scales matter
    finally:
        elastic.resize(1.0)


def test_a_tampered_scales_field_is_refused(tmp_path, trained):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, elastic, _ = trained
    elastic.resize(target=0.5)
    inn.save(elastic, tmp_path / "e.inn")
    elastic.resize(1.0)
    with safe_open(str(tmp_path / "e.inn"), framework="pt") as f:
        meta = json.loads(f.metadata()["torchinn"])
    tensors = load_file(str(tmp_path / "e.inn"))
    entry = meta["elastic"]["deployed"][0]
    assert entry["kind"] == "scales" and entry["partitions"] == {} and entry["scales"]
    group = entry["scales"][0]

    def refused(meta: dict, tensors: dict, match: str) -> None:
        save_file(tensors, str(tmp_path / "bad.inn"), metadata={"torchinn": json.dumps(meta)})
        with pytest.raises(FormatError, match=match):
            inn.load(tmp_path / "bad.inn", verify=False)

    bad = json.loads(json.dumps(meta))
    bad["elastic"]["deployed"][0]["kind"] = "points"
    refused(bad, tensors, r"elastic.deployed\[0\].kind must be one of \['partitions', 'scales', 'scales-bias', 'scales-refit'\], got 'points'")
    bad = json.loads(json.dumps(meta))
    bad["elastic"]["deployed"][0]["scales"] = entry["scales"][1:]
    refused(bad, tensors, r"elastic.deployed\[0\].scales must list the groups of elastic.deployed\[0\].sizes below")
    key = f"e/0/{group}/log_scale"
    short = dict(tensors, **{key: tensors[key][:-1].clone()})
    refused(meta, short, rf"{key} must hold {entry['sizes'][group]} floats \(one per kept channel\), got "
                         rf"{entry['sizes'][group] - 1} torch.float32")
    refused(meta, {k: v for k, v in tensors.items() if k != key}, rf"the file has no tensor '{key}'")
    bad = json.loads(json.dumps(meta))
    bad["elastic"]["deployed"][0]["partitions"] = {group: {"type": "uniform"}}
    refused(bad, tensors, r"elastic.deployed\[0\].partitions must be empty for kind 'scales'")


def test_bad_arguments_are_named():
    net, data = small_net(), small_data(3)
    with pytest.raises(ValueError, match=r"^deploy_kind must be .*'scales'.*'partitions'.*, got 'points'"):
        inn.make_elastic(net, data[0], data, steps=1, deploy=[0.5], deploy_kind="points")
    elastic = ElasticNetwork(inn.convert(net, (data[0],)), {})
    with pytest.raises(ValueError, match=r"^deploy: kind must be one of \['scales', 'partitions', 'scales-bias', 'scales-refit'\], got 'bias'$"):
        elastic.deploy([0.5], kind="bias")
    with pytest.raises(TypeError, match=r"^ScaledPartition needs a plain partition of one group .* got CompositePartition$"):
        ScaledPartition(CompositePartition([UniformPartition(4), UniformPartition(4)]))
    with pytest.raises(TypeError, match=r"^ScaledPartition needs .* got ScaledPartition$"):
        ScaledPartition(ScaledPartition(UniformPartition(4, size=2)))


def test_the_integral_model_alone_with_scales_is_not_saved_without_them(tmp_path, trained):
    _, elastic, _ = trained
    try:
        elastic.resize(target=0.25)
        with pytest.raises(TypeError, match=r"^a deployed size's ScaledPartition is saved with its ElasticNetwork"):
            inn.save(elastic.imodel, tmp_path / "i.inn")
    finally:
        elastic.resize(1.0)
