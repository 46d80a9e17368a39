"""Property test: random networks built from the operations the converter supports.

Every network must convert exactly at full size and give a discrete network equal to the
integral one at random sizes, or raise a clear torchinn error; never a silent mismatch.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch import nn

import torchinn as inn

EXAMPLES = int(os.environ.get("TORCHINN_RANDOM_NETWORKS", "200"))

BLOCKS = ("conv", "residual", "concat", "depthwise", "se", "pool", "groupnorm", "upsample", "split")


class Block(nn.Module):
    """One randomly chosen block; ``out_channels`` tells the next block what it gets."""

    def __init__(self, kind: str, c: int, width: int, norm: bool, act: str) -> None:
        super().__init__()
        self.kind = kind
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU(), "relu6": nn.ReLU6()}[act]
        bn = (lambda n: nn.BatchNorm2d(n)) if norm else (lambda n: nn.Identity())
        self.out_channels = c
        if kind == "conv":
            self.body = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), bn(width))
            self.out_channels = width
        elif kind == "residual":
            self.body = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), bn(width), nn.ReLU(),
                                      nn.Conv2d(width, c, 1), bn(c))
        elif kind == "concat":
            self.body = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), bn(width))
            self.out_channels = c + width
        elif kind == "depthwise":
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), bn(c), nn.ReLU(),
                                      nn.Conv2d(c, width, 1))
            self.out_channels = width
        elif kind == "se":
            hidden = max(2, width // 2)
            self.body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, hidden, 1), nn.ReLU(),
                                      nn.Conv2d(hidden, c, 1), nn.Sigmoid())
        elif kind == "pool":
            self.body = nn.MaxPool2d(2) if width % 2 else nn.AvgPool2d(2)
        elif kind == "groupnorm":
            groups = 2 if width % 2 == 0 else 1
            self.body = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(groups, width))
            self.out_channels = width
        elif kind == "upsample":
            self.body = nn.Conv2d(c, width, 1)
            self.out_channels = width
        elif kind == "split":  # ShuffleNet-style: half the channels pass, half go through a conv
            half = c // 2
            self.half = half
            self.body = nn.Sequential(nn.Conv2d(c - half, c - half, 3, padding=1), bn(c - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k in ("conv", "depthwise", "groupnorm"):
            return self.act(self.body(x))
        if k == "residual":
            return self.act(x + self.body(x))
        if k == "concat":
            return torch.cat([x, self.act(self.body(x))], 1)
        if k == "se":
            return x * self.body(x)
        if k == "pool":
            return self.body(x) if x.shape[-1] >= 4 else x
        if k == "upsample":
            y = self.act(self.body(x))
            return F.interpolate(y, scale_factor=2, mode="nearest") if y.shape[-1] <= 4 else y
        a, b = x[:, : self.half], x[:, self.half:]
        return torch.cat([a, self.act(self.body(b))], 1)


class RandomNet(nn.Module):
    def __init__(self, stem: int, blocks: list[tuple], head: str, classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, stem, 3, padding=1)
        layers, c = [], stem
        for kind, width, norm, act in blocks:
            if kind == "split" and c < 2:
                kind = "conv"
            block = Block(kind, c, width, norm, act)
            layers.append(block)
            c = block.out_channels
        self.blocks = nn.Sequential(*layers)
        self.head_kind = head
        if head == "pool":
            self.head = nn.Linear(c, classes)
        elif head == "flatten":
            self.head = nn.LazyLinear(classes)
        else:
            self.head = nn.Conv2d(c, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        if self.head_kind == "pool":
            return self.head(x.mean((2, 3)))
        if self.head_kind == "flatten":
            return self.head(F.adaptive_avg_pool2d(x, 2).flatten(1))
        return self.head(x)


def build(spec: dict) -> tuple[nn.Module, torch.Tensor]:
    """The network and input of ``spec`` (what :func:`networks` draws): a pure function of it,
    every weight and the input from ``torch.manual_seed(spec["seed"])``, the caller's RNG left
    alone. ``build(spec)`` with the spec a failure prints rebuilds the failing network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        model = RandomNet(spec["stem"], [tuple(b) for b in spec["blocks"]], spec["head"], spec["classes"])
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            model(x)  # materialise the lazy head
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.3)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.2)
    return model.eval(), x


@st.composite
def networks(draw) -> dict:
    """A network's spec for :func:`build`: plain values, printed in full by a failing example."""
    blocks = draw(st.lists(st.tuples(st.sampled_from(BLOCKS), st.integers(2, 12), st.booleans(),
                                     st.sampled_from(["relu", "gelu", "silu", "relu6"])),
                           min_size=1, max_size=5))
    head = draw(st.sampled_from(["pool", "flatten", "dense"]))
    stem = draw(st.integers(2, 10))
    classes = draw(st.integers(2, 6))
    return {"stem": stem, "blocks": blocks, "head": head, "classes": classes, "seed": draw(st.integers(0, 2**16))}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-6))


@pytest.fixture(scope="module")
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# A failure prints the spec of the network (`build(spec)` rebuilds it), the sizes drawn, and an
# @reproduce_failure blob (conftest's profile sets print_blob=True) that replays the example exactly.
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(networks(), st.data())
def test_random_network_converts_exactly_and_resamples_consistently(one_thread, spec, data) -> None:
    model, x = build(spec)
    what = f"network {spec}"  # in every assertion message: what rebuilds the failing network
    note(what)
    permute = data.draw(st.booleans(), label="permute")
    try:
        imodel = inn.convert(model, (x,), inn.ConvertConfig(permute=permute, tsp_time_limit=0.02))
    except (inn.UnsupportedOpError, ValueError) as err:  # a clear, documented refusal is allowed
        assert str(err)
        if os.environ.get("TORCHINN_SHOW_REFUSALS"):
            print("REFUSED", spec, err)
        return
    with torch.no_grad():
        ref = model(x)
        full = imodel(x)
    assert rel_err(ref, full) <= 1e-5, f"{what}: not exact at full size"
    sizes = {n: data.draw(st.integers(1, g.max_size), label=n) for n, g in imodel.groups.items()}
    imodel.resize(sizes)
    small = imodel.to_discrete()
    with torch.no_grad():
        a = imodel(x)
        b = small(x)
        c = small(torch.cat([x, x, x]))  # another batch size
    assert a.shape == ref.shape and b.shape == ref.shape and c.shape[1:] == ref.shape[1:]
    assert rel_err(a, b) <= 1e-5, f"{what}: discrete network differs from the integral one"
    # parameters are counted on the runtime's graph (the user's class keeps identity batch norms)
    graph = imodel.to_discrete(graph=True)
    assert sum(p.numel() for p in graph.parameters()) <= imodel.num_parameters(
        {n: g.max_size for n, g in imodel.groups.items()})
    assert sum(p.numel() for p in graph.parameters()) == imodel.num_parameters()


@given(networks())
@settings(max_examples=10)
def test_a_spec_rebuilds_the_same_network(spec) -> None:
    """What makes a printed failure reproducible: ``build`` depends on the spec only."""
    torch.randn(7)  # whatever the global RNG's state
    m1, x1 = build(spec)
    torch.randn(3)
    m2, x2 = build(spec)
    assert torch.equal(x1, x2)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert list(s1) == list(s2) and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_block_kinds_are_all_reachable() -> None:
    """Guard the generator: every block kind builds and runs."""
    for kind in BLOCKS:
        model = RandomNet(6, [(kind, 4, True, "relu")], "pool", 3).eval()
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("kind", BLOCKS)
def test_each_block_kind_converts(kind: str) -> None:
    torch.manual_seed(0)
    model = RandomNet(6, [(kind, 4, True, "relu"), ("conv", 5, False, "gelu")], "flatten", 3)
    x = torch.randn(2, 3, 8, 8)
    model(x)
    model.eval()
    imodel = inn.convert(model, (x,))
    with torch.no_grad():
        assert rel_err(model(x), imodel(x)) <= 1e-5
