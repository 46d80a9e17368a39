"""Tensors the library makes follow the model's device and dtype (issue 21, item 7): a float64
network goes through convert -> resize -> to_discrete (and trainable partitions, compress) in
float64, to float64 precision. (CUDA: tests/test_cuda.py, skipped without a GPU.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchinn as inn
from torchinn.maths.partition import FixedPartition, UniformPartition
from torchinn.maths.trainable import TrainablePartition

pytestmark = pytest.mark.usefixtures("single_thread")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10)).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_float64_network_stays_float64_through_convert_resize_to_discrete() -> None:
    net = cnn().double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    imodel = inn.convert(net, (x,))
    assert {p.dtype for p in imodel.parameters()} == {torch.float64}
    with torch.no_grad():
        ref = net(x)
        full = imodel(x)
        back = imodel.to_discrete()
        assert full.dtype == back(x).dtype == torch.float64
        assert rel(full, ref) < 1e-10 and rel(back(x), ref) < 1e-10  # measured 2e-16 / 4e-16: float64 noise
        imodel.resize({n: g.max_size // 2 for n, g in imodel.groups.items()})
        small = imodel.to_discrete()
        assert {p.dtype for p in small.parameters()} == {torch.float64}
        assert imodel(x).dtype == small(x).dtype == torch.float64
        assert rel(small(x), imodel(x)) < 1e-10
        # the float32 network resized alike differs by float32 noise only
        net32 = cnn()
        im32 = inn.convert(net32, (x.float(),))
        im32.resize({n: g.max_size // 2 for n, g in im32.groups.items()})
        assert 0 < rel(im32(x.float()).double(), imodel(x)) < 1e-4


@pytest.mark.parametrize("make", [lambda p: TrainablePartition(p), lambda p: FixedPartition(p.points(dtype=torch.float64)),
                                  lambda p: TrainablePartition(UniformPartition(p.max_size, size=p.max_size // 2))])
def test_a_partition_set_on_a_float64_model_becomes_float64(make) -> None:  # noqa: ANN001
    net = cnn().double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    imodel = inn.convert(net, (x,))
    name = next(iter(imodel.groups))
    partition = make(imodel.partition(name))
    imodel.set_partition(name, partition)
    points = imodel.partition(name).points(dtype=None)
    assert points.dtype == torch.float64 if isinstance(partition, TrainablePartition) else True
    assert all(t.dtype == torch.float64 for t in imodel.partition(name).parameters())
    with torch.no_grad():
        assert imodel(x).dtype == torch.float64
        assert rel(imodel.to_discrete()(x), imodel(x)) < 1e-10


def test_compress_a_float64_network() -> None:
    net = cnn().double()
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    small, report = inn.compress(net, (x,), 0.5, tune=inn.TuneConfig(steps=3, seconds=None, progress=False))
    assert {p.dtype for p in small.parameters()} == {torch.float64}
    with torch.no_grad():
        assert small(x).dtype == torch.float64 and torch.isfinite(small(x)).all()
    assert {p.dtype for p in net.parameters()} == {torch.float64}  # the user's network untouched
