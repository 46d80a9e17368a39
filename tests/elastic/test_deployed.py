"""Deployed sizes (``make_elastic(deploy=...)``): each carries its own sizes and tuned partitions
beside the one set of shared weights; measured against the ranked top-k at the same sizes, and
kept exactly through save / load."""

from __future__ import annotations

import json

import pytest
import torch

import torchinn as inn
from small_nets import rel_error, small_data, small_net
from torchinn.elastic import DeployedSizes, ElasticNetwork
from torchinn.io import FormatError


def test_tuned_partitions_beat_the_ranked_top_k_at_the_same_sizes(single_thread):
    net, data = small_net(), small_data()
    unseen = torch.cat(small_data(4, seed=7))
    elastic, report = inn.make_elastic(net, data[0], data, steps=80, lr=0.0, deploy=[0.25, 0.5],
                                       ranking="activation", deploy_kind="partitions")
    assert sorted(elastic.deployed) == [0.25, 0.5] and sorted(report.deployed) == [0.25, 0.5]
    for t, d in elastic.deployed.items():
        assert elastic.resize(target=t) == d.sizes and elastic.active_deployed() == t
        tuned = rel_error(elastic, net, unseen)
        # within 5% of the parameters asked, as choose_sizes gives
        assert abs(elastic.num_parameters() / sum(p.numel() for p in net.parameters()) - t) < 0.05
        elastic.set_sizes(d.sizes)   # the same sizes, the ranked top-k partitions
        assert elastic.active_deployed() is None
        ranked = rel_error(elastic, net, unseen)
        # measured (unseen inputs): 25%: 0.439 ranked -> 0.273 tuned; 50%: 0.186 -> 0.117
        assert tuned < 0.8 * ranked, (t, tuned, ranked)
        _, before, after = report.deployed[t]
        assert after < 0.8 * before, report
    # lr=0: the shared weights are the converted ones, the full size the original exactly
    elastic.resize(1.0)
    assert report.full_error_after == 0.0 and rel_error(elastic, net, unseen) < 1e-10
    # a size not deployed keeps the ranked top-k behaviour
    elastic.resize(target=0.4)
    assert elastic.active_deployed() is None


def test_joint_training_moves_weights_and_partitions_within_the_full_size_tolerance(single_thread):
    net, data = small_net(), small_data()
    elastic, report = inn.make_elastic(net, data[0], data, steps=60, lr=1e-3, full_tolerance=0.03,
                                       deploy=[0.25, 0.5], ranking="activation", deploy_kind="partitions")
    assert report.full_error_after <= 0.03 and report.kept_step > 0
    for t in (0.25, 0.5):
        _, before, after = report.deployed[t]
        assert after < 0.8 * before, report   # measured 0.387 -> 0.155 at 25%, 0.170 -> 0.071 at 50%
    assert "deployed 25% of the parameters" in str(report)


@pytest.mark.parametrize("kind", ["scales", "partitions"])
def test_saved_and_loaded_it_gives_identical_outputs_at_every_deployed_size(tmp_path, single_thread, kind):
    net, data = small_net(), small_data()
    elastic, _ = inn.make_elastic(net, data[0], data, steps=10, lr=1e-3, full_tolerance=1.0,
                                  deploy=[0.3, 0.6], ranking="activation", deploy_kind=kind)
    x = small_data(1, seed=3)[0]
    for at in (0.3, 1.0):
        elastic.resize(target=at) if at < 1 else elastic.resize(1.0)
        inn.save(elastic, tmp_path / "e.inn")
        back = inn.load(tmp_path / "e.inn")
        assert isinstance(back, ElasticNetwork) and back.sizes() == elastic.sizes()
        assert back.active_deployed() == elastic.active_deployed() == (0.3 if at < 1 else None)
        with torch.no_grad():
            assert torch.equal(back(x), elastic(x))
            for t in (0.3, 0.6):
                assert back.resize(target=t) == elastic.resize(target=t)
                assert torch.equal(back(x), elastic(x))
                assert torch.equal(back.to_discrete(graph=True)(x), elastic.to_discrete(graph=True)(x))
        assert {t: d.sizes for t, d in back.deployed.items()} == {t: d.sizes for t, d in elastic.deployed.items()}
        assert {d.kind for d in back.deployed.values()} == {kind}


def test_a_tampered_deployed_field_is_refused(tmp_path):
    net, data = small_net(), small_data(4)
    elastic, _ = inn.make_elastic(net, data[0], data, steps=1, lr=1e-6, deploy=[0.5], ranking="l1",
                                  deploy_kind="partitions")
    inn.save(elastic, tmp_path / "e.inn")
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(tmp_path / "e.inn"), framework="pt") as f:
        meta = json.loads(f.metadata()["torchinn"])
    tensors = load_file(str(tmp_path / "e.inn"))
    meta["elastic"]["active"] = 0.7
    save_file(tensors, str(tmp_path / "bad.inn"), metadata={"torchinn": json.dumps(meta)})
    with pytest.raises(FormatError, match=r"elastic.active must be null or one of the deployed targets \[0.5\], got 0.7"):
        inn.load(tmp_path / "bad.inn", verify=False)
    meta["elastic"]["active"] = None
    group = next(iter(meta["elastic"]["deployed"][0]["sizes"]))
    meta["elastic"]["deployed"][0]["sizes"][group] += 1
    save_file(tensors, str(tmp_path / "bad.inn"), metadata={"torchinn": json.dumps(meta)})
    with pytest.raises(FormatError, match=r"elastic.deployed\[0\].partitions\[.*\] has \d+ points, its size is \d+"):
        inn.load(tmp_path / "bad.inn", verify=False)


def test_bad_deploy_arguments():
    net, data = small_net(), small_data(3)
    with pytest.raises(ValueError, match=r"^deploy: every target must be a fraction of the parameters in \(0, 1\), got 1.5$"):
        inn.make_elastic(net, data[0], data, steps=1, deploy=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"^lr=0 trains nothing without deploy"):
        inn.make_elastic(net, data[0], data, steps=1, lr=0.0)
    with pytest.raises(ValueError, match=r"^deploy must be a non-empty list"):
        inn.make_elastic(net, data[0], data, steps=1, deploy=[])
    with pytest.raises(ValueError, match="needs an elastic network with deployed sizes"):
        DeployedSizes(ElasticNetwork(inn.convert(net, (data[0],)), {}))
