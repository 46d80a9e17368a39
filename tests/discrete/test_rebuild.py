"""to_discrete() gives back the user's own module: class, methods and attributes kept, sizes
updated, outputs equal to the graph module; the graph module when the user's forward hard-codes
a size (with a warning naming the line) or when asked for (graph=True)."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

import torchinn as inn
from torchinn.discrete.rebuild import relative_error

torch.set_num_threads(1)


class Tagged(nn.Module):
    """A zoo-like net with a helper method, a custom attribute and size-named attributes."""

    def __init__(self, width: int = 12, hidden: int = 20, heads: int = 2):
        super().__init__()
        self.tag = "mine"
        self.num_heads, self.head_dim = heads, hidden // heads
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, 5)

    def features(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.dw(x).mean((2, 3))

    def forward(self, x):
        h = self.fc1(self.norm(self.features(x)))
        h = h.view(h.shape[0], self.num_heads, self.head_dim).relu().flatten(1)
        return self.fc2(h)


class HardCoded(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 4)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.conv(x), 4)
        x = x.view(x.size(0), 128)  # a size no attribute controls
        return self.fc(x)


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def tagged():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = _calibrated(Tagged(), x)
    return model, x, inn.convert(model, (x,))


def _quiet_discrete(imodel):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return imodel.to_discrete()


def test_class_methods_attributes_and_sizes(tagged):
    model, x, imodel = copy.deepcopy(tagged)
    sizes = imodel.resize({"conv": 7, "fc1": 6})  # fc1's group is the head size
    small = _quiet_discrete(imodel)
    assert type(small) is Tagged and small.tag == "mine"
    assert (small.num_heads, small.head_dim) == (2, 6)  # hidden 20 -> 12, 2 heads kept
    assert small.conv.out_channels == small.bn.num_features == small.dw.groups == 7
    assert (small.dw.in_channels, small.dw.out_channels) == (7, 7)
    assert small.norm.normalized_shape == (7,)
    assert (small.fc1.in_features, small.fc1.out_features, small.fc2.in_features) == (7, 12, 12)
    assert isinstance(small.bn, nn.BatchNorm2d)
    with torch.no_grad():
        ref = imodel.to_discrete(graph=True)(x)
        assert relative_error(ref, small(x)) <= 1e-5
        assert small.features(x).shape == (2, 7)  # the helper method runs at the new sizes
    assert imodel.sizes() == sizes


def test_user_model_untouched(tagged):
    model, x, imodel = copy.deepcopy(tagged)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    imodel.resize(0.5)
    small = _quiet_discrete(imodel)
    assert dict(model.named_modules()) == modules and model.conv.out_channels == 12
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert small.conv is not model.conv and small.conv.weight.data_ptr() != model.conv.weight.data_ptr()


def test_state_dict_loads_into_a_fresh_smaller_instance(tagged):
    _, x, imodel = copy.deepcopy(tagged)
    imodel.resize({"conv": 5, "fc1": 4})
    small = _quiet_discrete(imodel)
    fresh = Tagged(width=5, hidden=8).eval()
    fresh.load_state_dict(small.state_dict())  # strict: same keys and shapes
    with torch.no_grad():
        assert relative_error(small(x), fresh(x)) == 0.0
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    buf.seek(0)
    again = Tagged(width=5, hidden=8).eval()
    again.load_state_dict(torch.load(buf))
    with torch.no_grad():
        assert torch.equal(again(x), small(x))


def test_folded_batch_norm_comes_back_as_identity(tagged):
    _, x, imodel = copy.deepcopy(tagged)
    assert imodel.report["folded_batch_norms"] == 1
    small = _quiet_discrete(imodel)
    assert torch.equal(small.bn.weight, torch.ones(12)) and torch.equal(small.bn.running_mean, torch.zeros(12))
    with torch.no_grad():
        y = small.conv(x)
        assert torch.allclose(small.bn(y), y + small.bn.bias[:, None, None], rtol=1e-6, atol=1e-6)


def test_hard_coded_view_falls_back_with_its_line():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = HardCoded().eval()
    imodel = inn.convert(model, (x,))
    assert type(_quiet_discrete(imodel)) is HardCoded  # full size: the hard-coded 128 still holds
    imodel.resize(0.5)
    line = next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if "x.view(x.size(0), 128)" in text)
    with pytest.warns(UserWarning, match=rf"test_rebuild\.py:{line} `x = x\.view\(x\.size\(0\), 128\)") as rec:
        small = imodel.to_discrete()
    assert "graph=True" in str(rec[0].message)
    assert isinstance(small, fx.GraphModule)
    with torch.no_grad():
        assert relative_error(imodel(x), small(x)) <= 1e-5


def test_graph_option_and_loaded_models(tagged, tmp_path):
    _, x, imodel = copy.deepcopy(tagged)
    imodel.resize(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm = imodel.to_discrete(graph=True)
        assert isinstance(gm, fx.GraphModule) and isinstance(inn.to_discrete(imodel, graph=True), fx.GraphModule)
        assert type(copy.deepcopy(imodel).to_discrete()) is Tagged  # deep copies keep the module
    with pytest.raises(TypeError, match=r"^Sequential is built from Integral\* layers.*torchinn.from_scratch"):
        inn.to_discrete(nn.Sequential(inn.nn.IntegralLinear(3, inn.maths.UniformPartition(4))), graph=True)
    inn.save(imodel, str(tmp_path / "m.inn"))
    loaded = inn.load(str(tmp_path / "m.inn"))
    with pytest.warns(UserWarning, match="does not hold the module it was converted from"):
        small = loaded.to_discrete()
    assert isinstance(small, fx.GraphModule)
    with torch.no_grad():
        assert relative_error(gm(x), small(x)) <= 1e-6


def test_multihead_attention_needs_equal_sizes():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(4, 8)
            self.attn = mha
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            h = self.inp(x)
            return self.out(self.attn(h, h, h, need_weights=False)[0])

    x = torch.randn(2, 5, 4)
    imodel = inn.convert(Net().eval(), (x,))
    imodel.resize(0.5)  # embed 8 -> 4, heads 2 -> 1 (whole heads; the head size 4 stays): 4 = 1 x 4
    small = _quiet_discrete(imodel)
    assert (small.attn.embed_dim, small.attn.num_heads, small.attn.head_dim) == (4, 1, 4)
    with torch.no_grad():
        assert relative_error(imodel(x), small(x)) <= 1e-5
    head = next(n for n in imodel.groups if "in_proj" in n)
    imodel.resize({head: 2})  # 2 heads of 4 = 8 != embed_dim 4: nn.MultiheadAttention cannot
    with pytest.warns(UserWarning, match=r"heads x head size \(8 now\) equal to its embed_dim \(4 now\)"):
        assert isinstance(imodel.to_discrete(), fx.GraphModule)


@settings(max_examples=12, deadline=None)
@given(conv=st.integers(1, 12), head=st.integers(1, 10))
def test_random_sizes_keep_the_class(tagged, conv, head):
    _, x, imodel = tagged
    saved = imodel.sizes()
    try:
        imodel.resize({"conv": conv, "fc1": head})
        small = _quiet_discrete(imodel)
        assert type(small) is Tagged and (small.head_dim, small.fc1.out_features) == (head, 2 * head)
        with torch.no_grad():
            assert relative_error(imodel(x), small(x)) <= 1e-5
    finally:
        imodel.resize(saved)


@pytest.mark.parametrize("attr", ["heads", "n_heads", "n_head"])
def test_head_counts_by_their_common_names(attr):
    from torchinn_demo.models.transformer import DigitsTransformer

    torch.manual_seed(0)
    net = DigitsTransformer(dim=16, heads=4, head_dim=4, hidden=32, depth=1, patch=7).eval()
    attn = net.blocks[0].attn
    setattr(attn, attr, attn.__dict__.pop("num_heads"))  # the user's class calls it `attr`
    type(attn).num_heads = property(lambda self: getattr(self, attr))  # what forward reads
    try:
        x = torch.randn(2, 1, 28, 28)
        imodel = inn.convert(net, (x,), inn.ConvertConfig(permute=False))
        heads = next(n for n, g in imodel.groups.items() if g.max_size == 4 and ("blocks.0.attn.proj.weight", 1) in g.members)
        imodel.resize({heads: 2})
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback to the graph module
            small = imodel.to_discrete()
        assert type(small) is DigitsTransformer and getattr(small.blocks[0].attn, attr) == 2
        torch.testing.assert_close(small(x), imodel(x), rtol=1e-5, atol=1e-6)
    finally:
        del type(attn).num_heads


# issue 21, item 4: modules the traced forward does not reach but that read resized channels
class _Face(nn.Module):
    """Class scores in forward; the box and landmark heads only in detect()."""

    def __init__(self, first: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, first, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(first, 32, 3, padding=1), nn.ReLU())
        self.cls_head = nn.Conv2d(32, 2, 1)
        self.box_head = nn.Conv2d(32, 4, 1)
        self.landmark_head = nn.Sequential(nn.Conv2d(32, 32, 1), nn.ReLU(), nn.Conv2d(32, 10, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_head(self.backbone(x))

    def detect(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.backbone(x)
        return self.cls_head(f), self.box_head(f), self.landmark_head(f)


class _FaceAll(_Face):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # every head on the traced forward
        return self.detect(x)


def test_head_off_forward_is_resized_with_its_features() -> None:
    torch.manual_seed(0)
    model, twin = _Face().eval(), _FaceAll().eval()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    imodel = inn.convert(model, (x,), inn.ConvertConfig(permute=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = imodel.to_discrete()
    assert type(full) is _Face and torch.equal(full.box_head.weight, model.box_head.weight)  # untouched
    imodel.resize(0.5)
    reference = inn.convert(twin, (x,), inn.ConvertConfig(permute=False))
    reference.resize({"backbone.0.weight:0": 8, "backbone.2.weight:0": 16})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resized, so nothing to warn about
        half = imodel.to_discrete()
    assert imodel.sizes()["backbone.2.weight:0"] == 16
    assert (half.box_head.in_channels, tuple(half.box_head.weight.shape)) == (16, (4, 16, 1, 1))
    assert half.landmark_head[0].in_channels == 16 and half.landmark_head[2].in_channels == 32
    with torch.no_grad():
        _, box, landmarks = half.detect(x)  # callable: each head reads the 16 channels it now gets
        want = reference(x)[1]
    assert landmarks.shape == (2, 10, 8, 8)
    # the box head is sampled as it would have been on the graph (the twin converts it there)
    assert torch.allclose(box, want, rtol=0, atol=1e-5 * float(want.abs().max())), float((box - want).abs().max())
    assert model.box_head.weight.shape == (4, 32, 1, 1)  # the user's model is not modified


def test_head_off_forward_that_cannot_be_told_is_named_in_a_warning() -> None:
    torch.manual_seed(0)
    model = _Face(first=32).eval()  # two groups of 32 channels: which one does box_head read?
    x = torch.randn(2, 3, 8, 8)
    imodel = inn.convert(model, (x,), inn.ConvertConfig(permute=False))
    imodel.resize(0.5)
    with pytest.warns(UserWarning) as record:
        half = imodel.to_discrete()
    messages = [str(w.message) for w in record]
    assert len(messages) == 2, messages
    assert messages[0] == (
        "to_discrete(): module 'box_head' is not used by forward, so torchinn cannot tell which channels it "
        "reads; it still expects 32 input channels; the resized groups of that size are ['backbone.0.weight:0', "
        "'backbone.2.weight:0'] (now [16, 16]): call it at your own risk, or keep those channels with "
        "ConvertConfig(keep_discrete=['backbone.0', 'backbone.2'])")
    assert messages[1].startswith("to_discrete(): module 'landmark_head.0' is not used by forward")
    assert record[0].filename == __file__  # points at the caller of to_discrete()
    assert type(half) is _Face and half.box_head.in_channels == 32  # left as it was
    # a graph module given back: its channels cannot be told from the partitions
    with pytest.warns(UserWarning, match=r"module_from\(\): module 'box_head' is not used by forward"):
        imodel.module_from(imodel.to_discrete(graph=True))


# -- the tolerance follows the network's float noise (issue 21 item 5) -------------------------------
class DeepNorms(nn.Module):
    def __init__(self, depth: int = 24, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                                  nn.ReLU6()) for _ in range(depth))
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x.mean((2, 3)))


class ScaledByWidth(nn.Module):
    """Scales by 1/sqrt of the channel count it reads at run time: the graph keeps the converted
    width's constant, so at other sizes the class really computes something else (finitely)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 12, 3, padding=1), nn.Linear(12, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean((2, 3))
        return self.fc(y * y.shape[1] ** -0.5)


def _real_scale(net):
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.01, 3.0)
            m.weight.data.uniform_(0.3, 2.0)
            m.bias.data.normal_(0, 0.3)
    return net.eval()


def test_deep_network_within_its_float_noise_comes_back_as_its_class(monkeypatch):
    import torchinn.discrete.tolerance as tolerance
    torch.manual_seed(0)
    net, x = _real_scale(DeepNorms()), torch.randn(2, 3, 16, 16)
    imodel = inn.convert(net, (x,))
    gm = imodel.to_discrete(graph=True)
    monkeypatch.setattr(tolerance, "DISCRETE_FLOOR", -1.0)  # no error passes the floor: the noise decides
    small = _quiet_discrete(imodel)
    assert type(small) is DeepNorms
    with torch.no_grad():
        error = relative_error(gm(x), small(x))
    noise = tolerance.float_noise(net, (x,))
    assert error <= tolerance.NOISE_FACTOR * noise
    assert 1e-9 < noise < 1e-5  # float32 rounding, measured against float64


def test_size_that_does_not_follow_still_falls_back_within_float_noise(monkeypatch):
    import torchinn.discrete.tolerance as tolerance
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    imodel = inn.convert(ScaledByWidth().eval(), (x,))
    assert type(_quiet_discrete(imodel)) is ScaledByWidth
    imodel.resize({"conv": 6})
    monkeypatch.setattr(tolerance, "DISCRETE_FLOOR", -1.0)
    with pytest.warns(UserWarning, match=r"ScaledByWidth at the current sizes differs from the integral model by "
                                         r"0\.\d+ \(relative; at most [0-9.e-]+ allowed\)"):
        small = imodel.to_discrete()
    assert isinstance(small, fx.GraphModule)


def test_judge_keeps_fixed_tolerances_where_they_decide():
    import math

    from torchinn.discrete.tolerance import judge

    def no_noise():
        raise AssertionError("the float64 run is skipped")
    assert judge(5e-6, torch.float32, no_noise) == (True, 1e-5)
    assert judge(math.inf, torch.float32, no_noise) == (False, 1e-5)
    assert judge(0.02, torch.float16, no_noise) == (False, 16 * torch.finfo(torch.float16).eps)
    assert judge(3e-5, torch.float32, lambda: 4e-6) == (True, pytest.approx(4e-5))
    assert judge(5e-5, torch.float32, lambda: 4e-6) == (False, pytest.approx(4e-5))
    assert judge(2e-5, torch.float32, lambda: math.inf) == (False, 1e-5)
