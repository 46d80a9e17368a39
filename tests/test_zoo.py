"""The model zoo itself: every entry builds, runs, is finite, in eval mode and deterministic."""

from __future__ import annotations

import time

import pytest
import torch

from torchinn_demo.zoo import ZOO

NAMES = sorted(ZOO)

REQUIRED = {
    "mlp", "vgg_bn", "resnet_basic", "resnet_bottleneck", "preact_resnet", "densenet",
    "mobilenet_v2", "se_net", "edsr", "unet", "vit_mha", "vit_timm", "conv1d", "shape_check",
    "view_flatten", "torch_flatten", "resnext", "groupnorm", "channel_buffer", "tied_weights",
}


def _build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return ZOO[name]()


def test_zoo_has_required_entries():
    assert REQUIRED <= set(ZOO), sorted(REQUIRED - set(ZOO))


@pytest.mark.parametrize("name", NAMES)
def test_builder_contract(name):
    model, inputs = _build(name)
    assert isinstance(model, torch.nn.Module)
    assert isinstance(inputs, tuple) and inputs, "example_inputs must be a non-empty tuple"
    assert all(isinstance(t, torch.Tensor) for t in inputs)
    assert not any(m.training for m in model.modules()), "zoo models are returned in eval mode"
    assert ZOO[name].__doc__, "each entry documents what it exercises"


@pytest.mark.parametrize("name", NAMES)
def test_forward_finite_and_fast(name):
    model, inputs = _build(name)
    with torch.no_grad():
        model(*inputs)  # warm-up (first-call kernel selection)
        t0 = time.perf_counter()
        out = model(*inputs)
        dt = time.perf_counter() - t0
    assert isinstance(out, torch.Tensor)
    assert out.shape[0] == inputs[0].shape[0]
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0
    assert dt < 1.0, f"{name} forward took {dt:.2f}s"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name):
    m1, x1 = _build(name, seed=123)
    m2, x2 = _build(name, seed=123)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    for a, b in zip(x1, x2):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(m1(*x1), m2(*x2))
    m3, _ = _build(name, seed=124)
    assert any(not torch.equal(v, m3.state_dict()[k]) for k, v in s1.items() if v.is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_grad_flows(name):
    """Every trainable parameter is used by the forward (no dead entries in the zoo)."""
    model, inputs = _build(name)
    model(*inputs).float().square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused


def test_edge_case_behaviour():
    model, (x,) = _build("shape_check")
    with pytest.raises(ValueError, match="3 input channels"):
        model(x[:, :2])
    model, (x,) = _build("tied_weights")
    assert model.shared.weight.shape == (24, 24)
    model, (x,) = _build("channel_buffer")
    assert not any("bn" in n for n, _ in model.named_parameters())
    assert sum("bn" in n for n, _ in model.named_buffers()) == 8
    model, (x,) = _build("edsr")
    assert model(x).shape[-2:] == (2 * x.shape[-2], 2 * x.shape[-1])
    model, (x,) = _build("unet")
    assert model(x).shape[-2:] == x.shape[-2:]
    for name in ("view_flatten", "torch_flatten", "vgg_bn"):
        model, _ = _build(name)
        first_fc = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert first_fc.in_features > max(
            m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)
        ), f"{name}: flatten must see spatial size > 1"


@pytest.mark.parametrize("name", NAMES)
def test_to_discrete_gives_back_the_class(name):
    """At half of every group, to_discrete() is the zoo model's own class (same submodule names),
    equal to the integral model's graph module, and the zoo model is left as it was."""
    import warnings

    import torchinn as inn
    from torchinn.discrete.rebuild import relative_error

    torch.set_num_threads(1)
    model, inputs = _build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imodel = inn.convert(model, inputs)
    imodel.resize(0.5)
    if name == "vit_timm":  # its attention ends in reshape(B, N, C), C the stream width: heads x 8 = C
        full = {g: grp.max_size for g, grp in imodel.groups.items()}
        imodel.resize({g: 2 if s == 3 else 16 for g, s in full.items() if s in (3, 24)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the graph module
        small = imodel.to_discrete()
    assert type(small) is type(model)
    assert [n for n, _ in small.named_modules()] == [n for n, _ in model.named_modules()]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    graph = imodel.to_discrete(graph=True)
    with torch.no_grad():
        ref = graph(*inputs)
        assert relative_error(ref, small(*inputs)) <= 1e-5
        assert relative_error(imodel(*inputs), small(*inputs)) <= 1e-5
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_timm_attention_with_fewer_heads_than_the_stream_falls_back():
    """Whole heads are removed, and timm-style code reshapes the attention output to the stream
    width read from its input (``reshape(B, N, C)``): with 2 heads of 8 and a stream of 24 the
    class cannot run, so the graph module comes back with a warning naming that line."""
    import torchinn as inn

    torch.set_num_threads(1)
    model, inputs = _build("vit_timm")
    imodel = inn.convert(model, inputs, inn.ConvertConfig(permute=False))
    imodel.resize({g: 2 for g, grp in imodel.groups.items() if grp.max_size == 3})
    with pytest.warns(UserWarning, match=r"zoo\.py:\d+ `x = x\.transpose\(1, 2\)\.reshape\(B, N, C\)`"):
        small = imodel.to_discrete()
    assert isinstance(small, torch.fx.GraphModule)
    with torch.no_grad():
        assert torch.allclose(small(*inputs), imodel(*inputs), atol=1e-5)
