"""Conditions torch.export traces under are kept: branches on sizes, Python scalar inputs,
positional tables sliced to the input length (issue 11)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.export import Dim

import torchinn as inn

CFG = inn.ConvertConfig(permute=False)


class _Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)


class BatchBranch(_Base):
    def forward(self, x):
        h = self.a(x)
        h = h * 0.5 if x.shape[0] > 4 else h
        return self.b(h)


class NotThree(_Base):
    def forward(self, x):
        h = self.a(x)
        if x.shape[0] == 3:
            h = h * 2
        return self.b(h)


class EvenLength(_Base):
    def forward(self, x):  # (B, T, 4)
        h = self.a(x)
        if x.shape[1] % 2 == 0:
            h = h * 2
        return self.b(h)


class PairReshape(_Base):
    def forward(self, x):  # (B, T, 4): pairs of positions summed; no branch of its own
        h = self.a(x)
        b, t, c = h.shape
        return self.b(h.reshape(b, t // 2, 2, c).sum(2))


class Scaled(_Base):
    def forward(self, x, t):
        return self.b(self.a(x) * t)


class Positional(_Base):
    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(16, 8))

    def forward(self, x):  # (B, T, 4), T <= 16
        return self.b(self.a(x) + self.pos[: x.shape[1]])


class TwoInputs(_Base):
    def forward(self, x, y):
        return self.b(self.a(x) + self.a(y))


@functools.cache
def converted(cls: type, *shape: int) -> tuple[nn.Module, inn.IntegralModel, nn.Module]:
    model = cls().eval()
    imodel = inn.convert(model, (torch.randn(*shape),), CFG)
    return model, imodel, imodel.to_discrete(graph=True)  # the graph module checks the guards


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, atol=1e-5, rtol=1e-5))


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 12))
def test_batch_branch_is_right_or_refused(batch: int) -> None:
    model, imodel, discrete = converted(BatchBranch, 8, 4)
    x = torch.randn(batch, 4)
    if batch > 4:
        with torch.no_grad():
            assert close(imodel(x), model(x)) and close(discrete(x), model(x))
        return
    with pytest.raises(ValueError, match=rf"input 0 \('x'\) has size {batch} in dimension 0, .*"
                                         r"only valid for x\.shape\[0\] in \[5, inf\)"):
        imodel(x)
    with pytest.raises(RuntimeError, match=r"input 0 \('x'\): the network is only valid for "
                                           r"x\.shape\[0\] in \[5, inf\)"):
        discrete(x)


def test_size_conditions_other_than_ranges() -> None:
    model, imodel, discrete = converted(NotThree, 8, 4)
    assert [g.text for g in imodel.input_guards] == ["x.shape[0] != 3"]
    for f, exc in ((imodel, ValueError), (discrete, RuntimeError)):
        with pytest.raises(exc, match=r"x\.shape\[0\] != 3"):
            f(torch.randn(3, 4))
    with torch.no_grad():
        for b in (1, 2, 5):
            x = torch.randn(b, 4)
            assert close(imodel(x), model(x)) and close(discrete(x), model(x))
    model, imodel, discrete = converted(EvenLength, 2, 6, 4)
    with pytest.raises(ValueError, match=r"\(x\.shape\[1\] % 2\) == 0"):
        imodel(torch.randn(2, 5, 4))
    with torch.no_grad():
        x = torch.randn(3, 8, 4)
        assert close(imodel(x), model(x)) and close(discrete(x), model(x))


def test_plain_models_stay_fully_dynamic() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    imodel = inn.convert(model, (torch.randn(5, 4),), CFG)
    assert imodel.input_guards == []
    assert not [n for n in imodel.runtime.graph.nodes if "assert" in str(n.target)]
    # a reshape gives torch many guards on its fake shapes (T // 2 != 1, ...): none is kept
    pmodel, pimodel, pdiscrete = converted(PairReshape, 2, 6, 4)
    assert pimodel.input_guards == []
    with torch.no_grad():
        for shape in ((1, 2, 4), (3, 2, 4), (2, 10, 4)):
            x = torch.randn(*shape)
            assert close(pimodel(x), pmodel(x)) and close(pdiscrete(x), pmodel(x))
        for b in (1, 3, 17):
            x = torch.randn(b, 4)
            assert close(imodel(x), model(x))


def test_inputs_traced_with_one_size_must_keep_it() -> None:
    model = TwoInputs().eval()
    imodel = inn.convert(model, (torch.randn(3, 4), torch.randn(3, 4)), CFG)
    with pytest.raises(ValueError, match=r"y\.shape\[0\] == x\.shape\[0\]"):
        imodel(torch.randn(3, 4), torch.randn(2, 4))
    x, y = torch.randn(5, 4), torch.randn(5, 4)
    with torch.no_grad():
        assert close(imodel(x, y), model(x, y))


@pytest.mark.parametrize("value,other", [(2.0, 3.0), (3, 4), (True, False), (2.0, 2)])
def test_scalar_inputs_are_checked_constants(value, other) -> None:
    model = Scaled().eval()
    x = torch.randn(3, 4)
    imodel = inn.convert(model, (x, value), CFG)
    discrete = imodel.to_discrete(graph=True)
    with torch.no_grad():
        assert close(imodel(x, value), model(x, value)) and close(discrete(x, value), model(x, value))
    with pytest.raises(ValueError, match=rf"input 1 \('t'\) is {other!r}, but the network was "
                                         rf"converted with {value!r} there"):
        imodel(x, other)
    if value != other:  # the graph compares values: 2 == 2.0 there (the same product)
        with pytest.raises(RuntimeError, match=rf"input 1 \('t'\) must be {value!r}"):
            discrete(x, other)


def test_positional_table_sliced_to_the_length() -> None:
    model, imodel, _ = converted(Positional, 2, 8, 4)
    (group,) = imodel.groups.values()  # one group: the table's rows are not channels
    assert ("a.weight", 0) in group.members and ("pos", 1) in group.members
    assert "pos:0" in imodel.pinned
    with torch.no_grad():
        for t in (3, 8, 16):
            x = torch.randn(2, t, 4)
            assert close(imodel(x), model(x))
        imodel.resize(0.5)
        small = imodel.to_discrete()
        assert small.get_parameter("pos").shape == (16, 4)
        for t in (5, 16):
            x = torch.randn(2, t, 4)
            assert close(imodel(x), small(x)) and imodel(x).shape == (2, t, 2)
        imodel.resize(1.0)
    with pytest.raises(ValueError, match=r"only valid for x\.shape\[1\] in \[0, 16\]"):
        imodel(torch.randn(2, 17, 4))


def test_saved_model_keeps_its_guards(tmp_path: Path) -> None:
    _, imodel, _ = converted(BatchBranch, 8, 4)
    path = tmp_path / "m.inn"
    inn.save(imodel, path)
    loaded = inn.load(path)
    assert loaded.input_guards == imodel.input_guards and loaded.input_names == ["x"]
    with pytest.raises(ValueError, match=r"input 0 \('x'\) has size 2 .*x\.shape\[0\] in \[5, inf\)"):
        loaded(torch.randn(2, 4))
    x = torch.randn(6, 4)
    with torch.no_grad():
        assert close(loaded(x), imodel(x))


def test_saved_scalar_input_guard(tmp_path: Path) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)

        def forward(self, x, t):
            return self.a(x) * t

    imodel = inn.convert(Scaled().eval(), (torch.randn(8, 4), 2.0))
    inn.save(imodel, tmp_path / "s.inn")
    loaded = inn.load(tmp_path / "s.inn")
    with pytest.raises(ValueError, match=r"input 1 \('t'\) is 3\.0, but the network was converted with 2\.0"):
        loaded(torch.randn(2, 4), 3.0)


def test_discrete_network_exports_with_its_guard() -> None:
    model, _, discrete = converted(BatchBranch, 8, 4)
    ep = torch.export.export(discrete, (torch.randn(8, 4),), dynamic_shapes=({0: Dim.AUTO},))
    x = torch.randn(6, 4)
    with torch.no_grad():
        assert close(ep.module()(x), model(x))
    with pytest.raises(Exception, match=r"x\.size\(\)\[0\] >= 5|x\.shape\[0\] in \[5, inf\)"):
        ep.module()(torch.randn(2, 4))


def test_failed_export_prints_nothing(capfd) -> None:
    class Branchy(_Base):
        def forward(self, x):
            y = self.a(x)
            if y.sum() > 0:
                y = y * 2
            return self.b(y)

    with pytest.raises(RuntimeError, match="torch.export could not trace Branchy"):
        inn.convert(Branchy(), (torch.randn(2, 4),))
    _out, err = capfd.readouterr()
    assert "def forward" not in err and "Unable to find user code" not in err
    assert err == ""


def test_resize_mapping_with_a_bad_entry_changes_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    imodel = inn.convert(model.eval(), (torch.randn(2, 4),), CFG)
    first, second = list(imodel.groups)
    before = imodel.sizes()
    for bad in (0, 7, 1.5, "3"):
        with pytest.raises((ValueError, TypeError)):
            imodel.resize({first: 4, second: bad})
        assert imodel.sizes() == before
    assert imodel.resize({first: 4, second: 3}) == {first: 4, second: 3}


def test_negative_running_var_is_named_before_tracing() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_var[2] = -0.5
    with pytest.raises(ValueError, match=r"batch norm '1' has 1 negative running_var value\(s\) \(min -0\.5\)"):
        inn.convert(model, (torch.randn(2, 3, 8, 8),))


def test_bool_mask_along_channels() -> None:
    class Masked(_Base):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mask", torch.tensor([True, False] * 4))

        def forward(self, x):
            return self.b(self.a(x).masked_fill(self.mask, 0.0))

    model = Masked().eval()
    x = torch.randn(3, 4)
    for permute in (True, False):
        with pytest.raises(TypeError, match=r"tensor 'mask' of dtype torch\.bool is used along the "
                                            r"channels of group\(s\) \['a\.weight:0'\].*keep_discrete=\['mask'\]"):
            inn.convert(model, (x,), inn.ConvertConfig(permute=permute))
    imodel = inn.convert(model, (x,), inn.ConvertConfig(keep_discrete=["mask"]))
    with torch.no_grad():
        assert close(imodel(x), model(x))


class OneIsSpecial(_Base):
    def forward(self, x):
        h = self.a(x)
        if x.shape[0] > 1:  # torch.export assumes sizes >= 2 and records no guard for this
            h = h - h.mean(0)
        return self.b(h)


def test_branch_on_a_batch_of_one() -> None:
    model, imodel, discrete = converted(OneIsSpecial, 3, 4)
    x = torch.randn(1, 4)
    with pytest.raises(ValueError, match=r"has size 1 in dimension 0, .*x\.shape\[0\] in \[2, inf\)"):
        imodel(x)
    with pytest.raises(RuntimeError, match=r"x\.shape\[0\] in \[2, inf\)"):
        discrete(x)
    with torch.no_grad():
        x = torch.randn(5, 4)
        assert close(imodel(x), model(x)) and close(discrete(x), model(x))
    with pytest.raises(RuntimeError, match=r"OneIsSpecial computes something else at batch 1 than at "
                                           r"batch 2 .* convert it with a batch of 2 or more"):
        inn.convert(OneIsSpecial().eval(), (torch.randn(1, 4),), CFG)
    plain = nn.Sequential(nn.Linear(4, 3)).eval()  # no branch: batch 1 stays allowed
    assert inn.convert(plain, (torch.randn(3, 4),), CFG).input_guards == []


class RatioBranch(_Base):
    def forward(self, x):  # (B, T, 4)
        h = self.a(x)
        if x.shape[1] / 3 > 2.5:  # a condition torchinn does not translate: T stays static
            h = h * 2
        return self.b(h)


def test_untranslatable_condition_keeps_its_size_static() -> None:
    model, imodel, _ = converted(RatioBranch, 2, 9, 4)
    assert imodel.input_shapes == [(None, 9, 4)]
    with pytest.raises(ValueError, match=r"input 0 has shape \(2, 7, 4\), but the network was "
                                         r"converted for inputs of shape \(any, 9, 4\)"):
        imodel(torch.randn(2, 7, 4))
    with torch.no_grad():
        x = torch.randn(3, 9, 4)
        assert close(imodel(x), model(x))


class Modes(_Base):
    """Branches on a str, an optional float and a float that may be NaN (issue 20, item 5)."""

    def forward(self, x, mode: str = "relu", scale: float | None = None, shift: float = 0.0):
        h = self.a(x)
        h = torch.relu(h) if mode == "relu" else torch.tanh(h)
        if scale is not None:
            h = h * scale
        if shift == shift:  # False for NaN only
            h = h + 1.0
        return self.b(h)


# (the inputs converted with, another value for one of them, its index and name)
_OTHER = [(("relu", None, 0.0), ("tanh", None, 0.0), 1, "mode", "'relu'"),
          (("relu", None, 0.0), ("relu", 2.0, 0.0), 2, "scale", "None"),
          (("tanh", None, float("nan")), ("tanh", None, 1.0), 3, "shift", "nan")]


@pytest.mark.parametrize("values,other,i,name,want", _OTHER, ids=["str", "None", "nan"])
def test_graph_module_checks_str_none_and_nan_inputs(values, other, i, name, want) -> None:
    model = Modes().eval()
    x = torch.randn(3, 4)
    imodel = inn.convert(model, (x, *values), CFG)
    with torch.no_grad():
        assert not close(model(x, *other), model(x, *values))  # the other value computes something else
        gm = imodel.to_discrete(graph=True)
        assert isinstance(gm, torch.fx.GraphModule) and close(gm(x, *values), model(x, *values))
        with pytest.raises(ValueError, match=rf"input {i} \('{name}'\) is .*, but the network was converted "
                                             rf"with {want} there"):
            imodel(x, *other)
        with pytest.raises(RuntimeError, match=rf"input {i} \('{name}'\) must be {want}, the value the network "
                                               r"was converted with: torch\.export bakes a Python input"):
            gm(x, *other)
        # the user's own class runs its own forward: right for any value
        mine = imodel.to_discrete()
        assert type(mine) is Modes
        assert close(mine(x, *other), model(x, *other)) and close(mine(x, *values), model(x, *values))


def test_graph_module_checks_keyword_str_inputs_after_torch_save(tmp_path: Path) -> None:
    model = Modes().eval()
    x = torch.randn(3, 4)
    imodel = inn.convert(model, (x,), CFG, kwargs={"mode": "tanh", "scale": None})
    gm = imodel.to_discrete(graph=True)
    torch.save(gm, tmp_path / "gm.pt")
    loaded = torch.load(tmp_path / "gm.pt", weights_only=False)
    with torch.no_grad():
        for net in (gm, loaded):
            assert close(net(x, mode="tanh", scale=None), model(x, mode="tanh"))
            with pytest.raises(RuntimeError, match=r"input 1 \('mode'\) must be 'tanh'"):
                net(x, mode="relu", scale=None)
            with pytest.raises(RuntimeError, match=r"input 2 \('scale'\) must be None"):
                net(x, mode="tanh", scale=0.5)
