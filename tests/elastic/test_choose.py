"""Deployed sizes chosen as ``compress`` chooses them (``make_elastic(deploy_sizes="best")``,
:func:`torchinn.elastic.choose.choose_deployed_sizes`): the Fisher greedy sizes beside the
curves', each measured on held-out batches, the lower error kept; the chosen sizes are the
deployed ones, meet the target, and survive the ``.inn`` round trip; bad arguments are named."""

from __future__ import annotations

import pytest
import torch

import torchinn as inn
from torchinn.elastic.choose import choose_deployed_sizes
from small_nets import small_data, small_net

TARGETS = [0.25, 0.5, 0.75]


@pytest.fixture(scope="module")
def made():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, data = small_net(), small_data()
        elastic, report = inn.make_elastic(net, data[0], data, steps=4, deploy=TARGETS, deploy_kind="scales",
                                           ranking="fisher", deploy_sizes="best")
    finally:
        torch.set_num_threads(threads)
    return net, data, elastic, report


def test_each_size_keeps_the_candidate_with_the_lower_held_out_error(made):
    net, data, elastic, report = made
    assert sorted(report.deployed_sizes) == TARGETS
    methods = {}
    for t, c in report.deployed_sizes.items():
        assert set(c["errors"]) == {"curves", "fisher"}
        assert c["errors"][c["method"]] == min(c["errors"].values())
        methods[t] = c["method"]
        assert f"sizes: {c['method']}" in str(report)
    # measured on this net (held-out relative squared error at the ranked top-k, before training):
    # 25%: the same sizes both ways, 0.3505; 50%: curves 0.1420, fisher 0.1406; 75%: curves 0.0343, fisher 0.0360
    assert methods == {0.25: "curves", 0.5: "fisher", 0.75: "curves"}
    e = {t: c["errors"] for t, c in report.deployed_sizes.items()}
    assert e[0.25]["curves"] == e[0.25]["fisher"] == pytest.approx(0.3505, rel=0.01)
    assert e[0.5]["fisher"] == pytest.approx(0.1406, rel=0.01) and e[0.5]["curves"] == pytest.approx(0.1420, rel=0.01)
    assert e[0.75]["curves"] < 0.97 * e[0.75]["fisher"]


def test_the_chosen_sizes_are_deployed_and_meet_the_target(made):
    net, data, elastic, report = made
    total = sum(p.numel() for p in net.parameters())
    for t, d in elastic.deployed.items():
        assert elastic.resize(target=t) == d.sizes
        small = elastic.to_discrete()
        assert sum(p.numel() for p in small.parameters()) == pytest.approx(t * total, rel=0.05)
        assert report.deployed[t][0] == sum(p.numel() for p in small.parameters())
    elastic.resize(1.0)


def test_a_curves_choice_equals_the_default_sizes(made):
    net, data, elastic, report = made
    default, _ = inn.make_elastic(net, data[0], data, steps=1, deploy=TARGETS, ranking="fisher")
    for t, c in report.deployed_sizes.items():
        if c["method"] == "curves":
            assert elastic.deployed[t].sizes == default.deployed[t].sizes
        else:
            assert elastic.deployed[t].sizes != default.deployed[t].sizes


def test_the_sizes_survive_save_and_load(tmp_path, made):
    net, data, elastic, report = made
    path = tmp_path / "e.inn"
    inn.save(elastic, path)
    again = inn.load(path)
    for t, d in elastic.deployed.items():
        assert again.deployed[t].sizes == d.sizes


def test_without_fisher_scores_the_curves_stand(made):
    net, data, elastic, report = made
    from torchinn.training.distill import resolve_loss
    with torch.no_grad():
        ref = [net(b) for b in data[-2:]]
    fresh, _ = inn.make_elastic(net, data[0], data, steps=1, ranking="fisher")  # curves measured, nothing deployed
    sizes, why = choose_deployed_sizes(fresh, [0.5], None, [(b,) for b in data[-2:]], ref, resolve_loss("mse", ref))
    assert why[0.5]["method"] == "curves" and list(why[0.5]["errors"]) == ["curves"]
    assert why[0.5]["errors"]["curves"] == pytest.approx(0.14, rel=0.05)
    assert fresh.sizes() == {n: 64 for n in fresh.elastic_groups}  # left at full size
    assert sizes[0.5] == fresh.resize(target=0.5)


def test_bad_arguments_are_named():
    net, data = small_net(), small_data(3)
    with pytest.raises(ValueError, match="deploy_sizes"):
        inn.make_elastic(net, data[0], data, steps=1, deploy=[0.5], deploy_sizes="fisher")
    with pytest.raises(ValueError, match="needs deploy"):
        inn.make_elastic(net, data[0], data, steps=1, deploy_sizes="best")
    e, _ = inn.make_elastic(net, data[0], data, steps=1, deploy=[0.5])
    with pytest.raises(ValueError, match=r"sizes\[0.5\] must give every elastic group"):
        e.deploy([0.5], sizes={0.5: {"0.weight:0": 0}})
