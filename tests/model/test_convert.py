"""Conversion of the model zoo: exact at full size, consistent and smaller when resized."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import torchinn as inn
from torchinn_demo.zoo import ZOO

# Channel groups a correct tracer finds (hand counts; see each builder's docstring).
EXPECTED_GROUPS = {
    "mlp": 2, "vgg_bn": 5, "resnet_basic": 8, "resnet_bottleneck": 12, "resnext": 10,
    "preact_resnet": 8, "densenet": 12, "mobilenet_v2": 9, "se_net": 6, "edsr": 5, "unet": 15,
    # stream + 2 MLP hidden + the heads of each nn.MultiheadAttention (q, k, v share them:
    # the packed in-projection is unflattened into 3 equal parts; the head size stays)
    "vit_mha": 5,
    # stream + 2 MLP hidden + the heads of each fused-qkv attention
    "vit_timm": 5,
    "conv1d": 3, "shape_check": 2, "view_flatten": 3, "torch_flatten": 3, "groupnorm": 2,
    "channel_buffer": 2, "tied_weights": 1,
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def flops(m: torch.nn.Module, inputs: tuple) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m(*inputs)
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def converted() -> dict:
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            model, inputs = ZOO[name]()
            state = copy.deepcopy(model.state_dict())
            imodel = inn.convert(model, inputs, inn.ConvertConfig(tsp_time_limit=0.05))
            cache[name] = (model, inputs, state, imodel)
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_exact_resized_and_smaller(name: str, converted) -> None:
    model, inputs, state, imodel = converted(name)
    # the user's model is untouched
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert len(imodel.groups) == EXPECTED_GROUPS[name], imodel.groups
    with torch.no_grad():
        ref = model(*inputs)
        out = imodel(*inputs)
    assert rel_err(ref, out) <= 1e-5
    # every group to a random size: the discrete network equals the integral one, and is smaller
    gen = torch.Generator().manual_seed(1)
    sizes = {n: int(torch.randint(1, g.max_size, (), generator=gen)) if g.max_size > 1 else 1
             for n, g in imodel.groups.items()}
    full = imodel.sizes()
    try:
        imodel.resize(sizes)
        small = imodel.to_discrete()
        with torch.no_grad():
            a = imodel(*inputs)
            b = small(*inputs)
        assert a.shape == ref.shape and b.shape == ref.shape
        assert rel_err(a, b) <= 1e-5
        # no torchinn class inside (the zoo's own classes live in torchinn_demo)
        assert not any(type(m).__module__.split(".")[0] == "torchinn" for m in small.modules())
        assert n_params(small) < n_params(model)
        assert flops(small, inputs) < flops(model, inputs)
    finally:
        imodel.resize(full)


def test_discrete_at_full_size_matches_original(converted) -> None:
    model, inputs, _, imodel = converted("resnet_bottleneck")
    small = imodel.to_discrete(graph=True)
    with torch.no_grad():
        assert rel_err(model(*inputs), small(*inputs)) <= 1e-5
    # batch norms were folded: fewer tensors, same parameter count minus the BN affine pairs
    assert not any("bn" in n for n, _ in small.named_parameters())
    # other batch sizes work (the batch dimension was traced as dynamic)
    x = torch.cat([inputs[0]] * 3)
    with torch.no_grad():
        assert rel_err(model(x), small(x)) <= 1e-5


@pytest.mark.parametrize("rule", ["left", "right", "midpoint", "trapezoid", "gauss-legendre"])
@pytest.mark.parametrize("name", ["resnet_basic", "vit_timm"])
def test_exact_for_every_quadrature(name: str, rule: str) -> None:
    torch.manual_seed(0)
    model, inputs = ZOO[name]()
    imodel = inn.convert(model, inputs, inn.ConvertConfig(quadrature=rule, permute=False))
    with torch.no_grad():
        assert rel_err(model(*inputs), imodel(*inputs)) <= 1e-5


def test_simpson_needs_odd_groups() -> None:
    torch.manual_seed(0)
    odd = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.ReLU(), torch.nn.Linear(9, 15),
                              torch.nn.Tanh(), torch.nn.Linear(15, 3))
    x = torch.randn(5, 4)
    imodel = inn.convert(odd, (x,), inn.ConvertConfig(quadrature="simpson"))
    with torch.no_grad():
        assert rel_err(odd(x), imodel(x)) <= 1e-5
    even = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"Simpson.*odd.*'0\.weight:0 \(8\)'"):
        inn.convert(even, (x,), inn.ConvertConfig(quadrature="simpson"))


def test_torch_export_and_compile_of_discrete(converted) -> None:
    model, inputs, _, imodel = converted("vit_timm")
    imodel.resize(0.5)
    try:
        small = imodel.to_discrete()
    finally:
        imodel.resize(1.0)
    with torch.no_grad():
        expected = small(*inputs)
        exported = torch.export.export(small, inputs).module()
        assert rel_err(expected, exported(*inputs)) <= 1e-6
        compiled = torch.compile(small, backend="eager")
        assert rel_err(expected, compiled(*inputs)) <= 1e-6


# -- errors ------------------------------------------------------------------------------------

def test_unsupported_op_names_node_and_how_to_keep_discrete() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 6)
            self.b = torch.nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), 0) + torch.fliplr(self.a(x)).sort(-1).values)

    x = torch.randn(3, 4)
    model = Odd()
    imodel = inn.convert(model, (x,))  # sort over channels is known: the group is kept whole
    assert len(imodel.groups) == 0
    with torch.no_grad():
        assert rel_err(model(x), imodel(x)) <= 1e-5

    class Strange(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 6)
            self.b = torch.nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.special.i0(self.a(x)))

    with pytest.raises(inn.UnsupportedOpError, match=r"(?s)special_i0.*at node .special_i0. \(test_convert.py:\d+.*keep_discrete"):
        inn.convert(Strange(), (x,))
    kept = inn.convert(Strange(), (x,), inn.ConvertConfig(unsupported="keep"))
    assert len(kept.groups) == 0


def test_bad_inputs() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 4)
    imodel = inn.convert(net, (x,))
    with pytest.raises(KeyError, match=r"no group named '0\.weigth:0'; did you mean \['0\.weight:0'\]"):
        imodel.groups["0.weigth:0"]
    with pytest.raises(ValueError, match=r"has 8 channels; size must be in \[1, 8\], got 0"):
        imodel.resize({"0.weight:0": 0})
    with pytest.raises(ValueError, match=r"has 8 channels; size must be in \[1, 8\], got 9"):
        imodel.resize({"0": 9})
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got 1.5"):
        imodel.resize(1.5)
    bad = copy.deepcopy(net)
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'0\.weight' has 1 NaN/Inf"):
        inn.convert(bad, (x,))
    with pytest.raises(TypeError, match="needs an nn.Module"):
        inn.convert(lambda t: t, (x,))
    with pytest.raises(ValueError, match="quadrature must be one of"):
        inn.ConvertConfig(quadrature="simpsons")


def test_model_in_training_mode_is_converted_with_eval_statistics() -> None:
    torch.manual_seed(0)
    model, inputs = ZOO["vgg_bn"]()
    model.train()
    with pytest.warns(UserWarning, match="training mode; it is converted as in eval mode"):
        imodel = inn.convert(model, inputs)
    assert model.training  # left as it was
    model.eval()
    with torch.no_grad():
        assert rel_err(model(*inputs), imodel(*inputs)) <= 1e-5


def test_module_name_finds_its_group(converted) -> None:
    _, _, _, imodel = converted("resnet_basic")
    name = next(iter(imodel.groups))
    module = name.rsplit(".", 1)[0]
    assert imodel.groups[module] is not None
    assert imodel.groups[module].name == name


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_dtypes_convert_and_run(dtype: torch.dtype) -> None:
    """float64 is exact; 16-bit models keep float32 control values, so without batch norms to
    fold the full-size model is bit-exact, and with them within a few 16-bit ulps."""
    for name, exact in (("vit_timm", True), ("resnet_basic", False)):
        torch.manual_seed(0)
        model, inputs = ZOO[name]()
        model = model.to(dtype)
        inputs = tuple(x.to(dtype) for x in inputs)
        imodel = inn.convert(model, inputs, inn.ConvertConfig(permute=False))
        with torch.no_grad():
            err = rel_err(model(*inputs).float(), imodel(*inputs).float())
        if dtype == torch.float64:
            assert err <= 1e-12
        elif exact:
            assert err == 0.0
        else:
            assert err <= 16 * torch.finfo(dtype).eps
        imodel.resize(0.5)
        if name == "vit_timm":  # reshape(B, N, C) in its attention: heads x head size = the stream
            imodel.resize({g: 2 if s == 3 else 16 for g, s in ((g, grp.max_size) for g, grp in imodel.groups.items())
                           if s in (3, 24)})
        small = imodel.to_discrete(graph=True)  # the graph module runs the same ops: bit-exact
        assert all(p.dtype == dtype for p in small.parameters())
        with torch.no_grad():
            assert torch.equal(small(*inputs), imodel(*inputs))
        own = imodel.to_discrete()  # the model's class: scales folded into weights round once more
        assert type(own) is type(model) and all(p.dtype == dtype for p in own.parameters())
        with torch.no_grad():
            tol = 1e-12 if dtype == torch.float64 else 16 * torch.finfo(dtype).eps
            assert rel_err(own(*inputs).float(), imodel(*inputs).float()) <= tol


def test_slice_bounds_computed_from_input_sizes() -> None:
    # Swin pads its feature map to a multiple of the window, then crops it back with bounds
    # computed from the (dynamic) input size: the bound is a graph node, not an int
    class PadCrop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
            y = torch.nn.functional.pad(torch.relu(self.a(x)), (0, 3, 0, 3))[:, :, :h, :w]
            return self.b(y)

    torch.manual_seed(0)
    model, x = PadCrop().eval(), torch.randn(2, 3, 9, 11)
    imodel = inn.convert(model, (x,))
    assert [g.max_size for g in imodel.groups.values()] == [8]
    with torch.no_grad():
        assert rel_err(model(x), imodel(x)) <= 1e-5
        imodel.resize(0.5)
        small = imodel.to_discrete()
        assert rel_err(imodel(x), small(x)) <= 1e-5
    assert small.get_parameter("b.weight").shape == (4, 4, 3, 3)


class _Writes(torch.nn.Module):
    """A forward that writes to its input in place (issue 20, item 6), in one of several ways."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.how == "mul_":
            x.mul_(2)
        elif self.how == "slice":
            x[:, 0] = 0.0
        elif self.how == "view":
            x.view(-1).add_(1.0)
        elif self.how == "relu_":
            torch.relu_(x)
        elif self.how == "keyword":
            y.mul_(3)
            x = x + y
        h = self.a(x)
        out = self.b(torch.relu(h))
        return out + x.sum(1, keepdim=True)  # the written input is read again after the write


@pytest.mark.parametrize("how", ["mul_", "slice", "view", "relu_", "keyword"])
def test_forward_writing_to_its_input(how: str) -> None:
    model = _Writes(how).eval()
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    kwargs = {"y": y} if how == "keyword" else {}
    saved_x, saved_y = x.clone(), y.clone()
    imodel = inn.convert(model, (x,), inn.ConvertConfig(permute=False), kwargs=kwargs)
    assert torch.equal(x, saved_x) and torch.equal(y, saved_y)  # the caller's example is unchanged
    x2, y2 = torch.randn(5, 4), torch.randn(5, 4)
    kw2 = {"y": y2} if how == "keyword" else {}
    want = model(x2.clone(), **{k: v.clone() for k, v in kw2.items()})  # the original's return value
    before = x2.clone(), y2.clone()
    with torch.no_grad():
        assert rel_err(want, imodel(x2, **kw2)) < 1e-5
        gm = imodel.to_discrete(graph=True)
        assert rel_err(want, gm(x2, **kw2)) < 1e-5
    # neither the integral model nor the graph module writes to the caller's tensors
    assert torch.equal(x2, before[0]) and torch.equal(y2, before[1])
    imodel.resize(0.5)
    mine = imodel.to_discrete()  # the user's class, checked on copies of the stored example
    assert type(mine) is _Writes
    assert torch.equal(imodel._original.example[0], saved_x)
    with torch.no_grad():
        assert rel_err(imodel(x2, **kw2), mine(x2.clone(), **{k: v.clone() for k, v in kw2.items()})) < 1e-5


def test_forward_writing_to_its_input_saves_and_loads(tmp_path) -> None:
    model = _Writes("slice").eval()
    imodel = inn.convert(model, (torch.randn(3, 4),), inn.ConvertConfig(permute=False))
    inn.save(imodel, tmp_path / "w.inn")
    loaded = inn.load(tmp_path / "w.inn")
    x = torch.randn(6, 4)
    before = x.clone()
    with torch.no_grad():
        assert rel_err(model(x.clone()), loaded(x)) < 1e-5 and rel_err(model(x.clone()), loaded.to_discrete(graph=True)(x)) < 1e-5
    assert torch.equal(x, before)


class _Masked(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 2)

    def forward(self, x, mask=None, bias=None):
        h = torch.relu(self.a(x))
        return self.b(h if mask is None else h * mask)


@pytest.mark.parametrize("args,kwargs,pattern", [
    ((), {"masks": 1}, r"keyword input 'masks', which it was not converted with \(did you mean 'mask'\?\); "
                       r"no keyword input\(s\) \['mask'\], but it was converted with 1 positional input\(s\) "
                       r"and the keyword input\(s\) \['mask'\]"),
    ((), {"mask": 1, "bias": 1}, r"called with keyword input 'bias', which it was not converted with, but"),
    ((), {}, r"called with no keyword input\(s\) \['mask'\], but it was converted with 1 positional"),
    ((1,), {"mask": 1}, r"called with 2 positional input\(s\), but it was converted with 1 positional"),
])
def test_integral_model_names_keyword_inputs_it_was_not_converted_with(args, kwargs, pattern) -> None:
    x, mask = torch.randn(3, 4), torch.ones(3, 8)
    imodel = inn.convert(_Masked().eval(), (x,), inn.ConvertConfig(permute=False), kwargs={"mask": mask})
    kwargs = {k: mask for k in kwargs}
    with pytest.raises(ValueError, match=pattern) as err:
        imodel(x, *[mask for _ in args], **kwargs)
    assert "TreeSpec" not in str(err.value)
    with torch.no_grad():
        assert rel_err(_Masked().eval()(x, mask=mask), imodel(x, mask=mask)) < 1e-5


# -- examples with a batch of 1 (issue 21) ----------------------------------------------------------
class _Denoiser(torch.nn.Module):
    """Batch norm between pixel unshuffle and shuffle: traced on a doubled batch, a guard on the
    unshuffled sizes held the batch static at 2, and a batch-1 example was refused at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = torch.nn.Conv2d(12, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
        self.c2 = torch.nn.Conv2d(16, 12, 3, padding=1)

    def forward(self, x):
        y = torch.nn.functional.pixel_unshuffle(x, 2)
        return x - torch.nn.functional.pixel_shuffle(self.c2(torch.relu(self.bn(self.c1(y)))), 2)


class _ChannelShuffle(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.c2, self.fc = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), torch.nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        return self.fc(self.c2(x).mean((2, 3)))


class _SizeNormalised(torch.nn.Module):
    """Divides by sqrt(batch * h * w): the guard traced at a doubled batch (n * h * w == 128) holds
    only at batch 2, so the graph is traced again on the example's own batch (static at 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        return self.c2(y) / math.sqrt(y.shape[0] * y.shape[2] * y.shape[3])


def _real_scale_bn(net: torch.nn.Module) -> torch.nn.Module:
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return net.eval()


@pytest.mark.parametrize("make, shape, batch_free", [(_Denoiser, (1, 3, 16, 16), True),
                                                     (_ChannelShuffle, (1, 3, 8, 8), True),
                                                     (_SizeNormalised, (1, 3, 8, 8), False)])
def test_batch_one_example_converts_and_runs_at_batch_one(make, shape, batch_free):
    torch.manual_seed(0)
    net = _real_scale_bn(make())
    x = torch.randn(shape)
    imodel = inn.convert(net, x)
    assert imodel.input_shapes[0][0] == (None if batch_free else 1)
    assert imodel.input_shapes[0][1] == 3
    with torch.no_grad():
        want, got = net(x), imodel(x)
        assert torch.allclose(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))
        small = imodel.to_discrete()
        assert torch.allclose(small(x), want, rtol=0, atol=1e-4 * float(want.abs().max()))
        if batch_free:
            x3 = torch.randn(3, *shape[1:])
            assert torch.allclose(imodel(x3), net(x3), rtol=0, atol=1e-4 * float(net(x3).abs().max()))
        else:
            with pytest.raises(ValueError, match=r"input 0 has shape \(2, 3, 8, 8\), but the network was "
                                                 r"converted for inputs of shape \(1, 3, any, any\)"):
                imodel(torch.randn(2, 3, 8, 8))


class _FixedRows(torch.nn.Module):
    """CREPE's head (torchcrepe): features flattened with ``reshape(-1, 64)``, a width given as a
    number. Traced on a doubled batch, torch.export's reshape checks the rows it computes against 1
    (it takes sizes as >= 2); the batch of 1 broke that check and the graph was traced again static
    at batch 1, so every calibration batch was refused."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = torch.nn.Conv1d(1, 8, 5, stride=2, padding=2), torch.nn.BatchNorm1d(8)
        self.fc = torch.nn.Linear(64, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x[:, None])))
        return self.fc(y.permute(0, 2, 1).reshape(-1, 64))


def test_a_reshape_to_a_fixed_width_keeps_the_batch_free_at_batch_one():
    torch.manual_seed(0)
    net = _real_scale_bn(_FixedRows())
    imodel = inn.convert(net, torch.randn(1, 16))
    assert imodel.input_shapes[0][0] is None
    with torch.no_grad():
        for n in (1, 5):
            x = torch.randn(n, 16)
            want = net(x)
            assert want.shape == (n, 4)
            assert torch.allclose(imodel(x), want, rtol=0, atol=1e-4 * float(want.abs().max()))
        small = inn.compress(net, torch.randn(1, 16), 0.5, calibration=[torch.randn(6, 16) for _ in range(3)],
                             tune=False)[0]
        assert small(torch.randn(6, 16)).shape == (6, 4)
