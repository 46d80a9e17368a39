"""One protocol for every integral network: the top-level functions agree with the methods, for a
converted ``IntegralModel`` and for the one ``from_scratch`` makes of ``Integral*`` layers alike."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchinn as inn
from torchinn.nn import IntegralLinear
from torchinn.model import IntegralNetwork
from torchinn.maths import UniformPartition

X = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))


def scratch_net() -> nn.Sequential:
    torch.manual_seed(0)
    p, q = UniformPartition(12), UniformPartition(9)
    return nn.Sequential(IntegralLinear(6, p), nn.Tanh(), IntegralLinear(p, q), nn.Tanh(), IntegralLinear(q, 3))


_CONVERTED: list[inn.IntegralModel] = []


def converted() -> inn.IntegralModel:
    """A fresh copy of one converted MLP (converting once keeps the hypothesis tests fast)."""
    if not _CONVERTED:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 3)).eval()
        _CONVERTED.append(inn.convert(net, (X,), inn.ConvertConfig(permute=False)))
    return copy.deepcopy(_CONVERTED[0])


def both(kind: str) -> tuple[nn.Module, IntegralNetwork]:
    """Two identical networks of one kind: the one the functions get, the one the methods get."""
    if kind == "scratch":
        return inn.from_scratch(scratch_net(), (X,)), inn.from_scratch(scratch_net(), (X,))
    return converted(), converted()


KINDS = ["scratch", "converted"]
GROUPS = {kind: ["0.weight:0", "2.weight:0"] for kind in KINDS}  # one naming, whichever way it was made


def test_both_kinds_implement_the_protocol():
    for imodel in (converted(), inn.from_scratch(scratch_net(), (X,))):
        assert isinstance(imodel, IntegralNetwork) and inn.model.integral_network(imodel) is imodel
    net = scratch_net()
    assert not isinstance(net, IntegralNetwork) and not isinstance(UniformPartition(3), IntegralNetwork)
    with pytest.raises(TypeError, match=r"^Sequential is built from Integral\* layers, a declaration of an integral "
                       r"network: torchinn.from_scratch\(model, example_inputs\) gives its IntegralModel"):
        inn.model.integral_network(net)
    for bad, name in ((nn.Linear(2, 2), "Linear"), (3, "int")):
        with pytest.raises(TypeError, match=rf"^expected an integral network \(an IntegralModel from torchinn.convert "
                           rf"or torchinn.from_scratch\), got {name}$"):
            inn.model.integral_network(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_partitions_are_the_groups(kind):
    a, b = both(kind)
    found = inn.model.partitions(a)
    assert list(found) == GROUPS[kind] == list(b.partition_map()) == list(b.sizes())
    assert [p.max_size for p in found.values()] == [12, 9]
    assert all(x is y for x, y in zip(found.values(), inn.model.integral_network(a).partition_map().values()))
    if kind == "converted":
        assert list(found) == list(a.groups) == a.group_names
        assert all(found[n] is g.partition for n, g in a.groups.items())


@settings(max_examples=30)
@given(kind=st.sampled_from(KINDS), ratio=st.floats(0.01, 1.0))
def test_resize_ratio_function_equals_method(kind, ratio):
    a, b = both(kind)
    got = inn.resize(a, ratio)
    assert got == b.resize(ratio) == b.sizes() == inn.model.integral_network(a).sizes()
    assert list(got) == GROUPS[kind]
    first, second = got.values()
    assert first == max(1, round(ratio * 12))
    assert second == max(1, round(ratio * 9))
    x = X
    torch.testing.assert_close(inn.to_discrete(a)(x), b.to_discrete()(x), rtol=0, atol=0)


@settings(max_examples=30)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_resize_mapping_function_equals_method(kind, data):
    a, b = both(kind)
    names = data.draw(st.lists(st.sampled_from(GROUPS[kind]), unique=True, min_size=1, max_size=2))
    plan = {}
    for name in names:
        n = 12 if name == GROUPS[kind][0] else 9
        size = data.draw(st.integers(1, n).filter(lambda s, name=name: inn.model.partitions(a)[name].quadrature.allows(s))
                         | st.floats(0.05, 1.0))
        plan[name] = size
    got = inn.resize(a, plan)
    assert got == b.resize(plan)
    for name, value in plan.items():
        if isinstance(value, int):
            assert got[name] == value
    untouched = [n for n in GROUPS[kind] if n not in plan]
    assert all(got[n] == inn.model.partitions(a)[n].max_size for n in untouched)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.2])
def test_to_discrete_function_equals_method_equals_forward(kind, ratio):
    a, _ = both(kind)
    a.eval()
    inn.resize(a, ratio)
    net = inn.model.integral_network(a)
    by_function, by_method = inn.to_discrete(a), net.to_discrete()
    with torch.no_grad():
        y = net(X)
        torch.testing.assert_close(by_function(X), by_method(X), rtol=0, atol=0)
        torch.testing.assert_close(by_function(X), y, rtol=1e-5, atol=1e-6)
    assert not any(type(m).__module__.startswith("torchinn") for m in by_function.modules())
    if kind == "converted":  # torchinn.to_discrete(imodel) used to copy it with its partitions set to None
        assert type(by_function) is nn.Sequential  # the converted module's own class
        assert isinstance(inn.to_discrete(a, graph=True), torch.fx.GraphModule)
        assert by_function.get_parameter("0.weight").shape == (a.sizes()["0.weight:0"], 6)


@settings(max_examples=15)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31 - 1), low=st.floats(0.1, 1.0),
       distribution=st.sampled_from(["uniform", "full-biased"]))
def test_random_sizes_same_draws_for_every_spelling(kind, seed, low, distribution):
    runs = []
    for spell in (lambda m: m, inn.model.integral_network, inn.model.partitions):
        m, _ = both(kind)
        rs = inn.RandomSizes(spell(m), low=low, distribution=distribution, seed=seed)
        draws = []
        for _ in range(6):
            drawn = rs.step()
            assert drawn == inn.model.integral_network(m).sizes()
            draws.append(drawn)
        runs.append(draws)
    assert runs[0] == runs[1] == runs[2]
    assert list(runs[0][0]) == sorted(GROUPS[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_same_errors_for_both_kinds(kind):
    a, _ = both(kind)
    first, second = GROUPS[kind]
    with pytest.raises(ValueError, match=rf"group '{first}' has 12 channels; size must be in \[1, 12\], got 13"):
        inn.resize(a, {first: 13})
    with pytest.raises(ValueError, match=rf"group '{first}': a ratio must be in \(0, 1\], got 1.5"):
        inn.resize(a, 1.5)
    with pytest.raises(TypeError, match=rf"size for group '{first}' must be an int or a float ratio, got '3'"):
        inn.resize(a, {first: "3"})
    with pytest.raises(KeyError, match=rf"no group named 'nope'; known groups: \['{first}', '{second}'\]"):
        inn.resize(a, {"nope": 3})
    with pytest.raises(KeyError, match=r"no group named '0.weigth:0'"):
        inn.resize(a, {"0.weigth:0": 3})
    with pytest.raises(KeyError, match=r"no group named '0.weigth:0'; did you mean \['0.weight:0', '2.weight:0'\]"):
        inn.resize(converted(), {"0.weigth:0": 3})
    before = inn.model.integral_network(a).sizes()
    # one bad entry: nothing changes
    with pytest.raises(ValueError, match=rf"group '{second}' has 9 channels; size must be in \[1, 9\], got 0"):
        inn.resize(a, {first: 4, second: 0})
    assert inn.model.integral_network(a).sizes() == before == {first: 12, second: 9}


@pytest.mark.parametrize("kind", KINDS)
def test_a_ratio_leaves_fixed_groups_alone(kind):
    a, _ = both(kind)
    first, second = GROUPS[kind]
    trained = inn.maths.TrainablePartition(UniformPartition(9).resize(5))
    a.set_partition(second, trained)
    assert inn.resize(a, 0.5) == {first: 6, second: 5}
    with pytest.raises(ValueError, match=rf"group '{second}' has a TrainablePartition, which has a fixed size \(5\); got 3"):
        inn.resize(a, {second: 3})
    # its own size is fine: resize(sizes()) changes nothing for every network
    assert inn.resize(a, {first: 12, second: 5}) == {first: 12, second: 5}
    assert inn.resize(a, inn.model.integral_network(a).sizes()) == {first: 12, second: 5}


def test_module_names_find_their_group_in_both_kinds():
    for imodel in (inn.from_scratch(scratch_net(), (X,)), converted()):
        assert inn.resize(imodel, {"2": 5}) == {"0.weight:0": 12, "2.weight:0": 5}


def test_an_integral_model_inside_a_module_of_layers_is_not_an_integral_network():
    p = UniformPartition(4)
    outer = nn.Sequential(converted(), nn.ReLU(), IntegralLinear(3, p), IntegralLinear(p, 2)).eval()
    with pytest.raises(TypeError, match=r"^Sequential is built from Integral\* layers"):
        inn.resize(outer, 0.5)
    with pytest.raises(TypeError, match=r"'0' is an integral network already"):
        inn.from_scratch(outer, (X,))


def test_one_meaning_for_weights_and_sampled():
    layer = IntegralLinear(UniformPartition(4), 3)
    # a partition's weights() are quadrature weights; layers and models have sampled() tensors
    assert layer.in_partition.weights().shape == (4,) and not hasattr(layer, "weights")
    weight, bias = layer.sampled()
    assert weight.shape == (3, 4) and bias.shape == (3,)
    imodel = converted()
    tensors, _ = imodel.sampled()
    assert [tuple(t.shape) for t in tensors][:2] == [(12, 6), (12,)]
