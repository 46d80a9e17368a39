"""CUDA smoke test (issue 21, item 7): convert -> compress -> to_discrete on a GPU gives a network
whose parameters and outputs are on the GPU and match the same calls on the CPU. Skipped where no
GPU exists."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchinn as inn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10)).eval()


def test_convert_compress_to_discrete_on_cuda() -> None:
    net = small_cnn()
    torch.manual_seed(1)
    x = torch.randn(8, 3, 16, 16)
    calibration = [torch.randn(8, 3, 16, 16) for _ in range(4)]
    results = {}
    for device in ("cpu", "cuda"):
        model = copy.deepcopy(net).to(device)
        imodel = inn.convert(model, (x.to(device),), inn.ConvertConfig(permute=False))
        with torch.no_grad():
            assert torch.allclose(imodel(x.to(device)).cpu(), net(x), atol=1e-4)
        small, _ = inn.compress(model, (x.to(device),), 0.5, calibration=[c.to(device) for c in calibration],
                                tune=inn.TuneConfig(steps=3, seconds=None, progress=False),
                                config=inn.ConvertConfig(permute=False))
        with torch.no_grad():
            out = small(x.to(device))
        assert out.device.type == device
        assert all(t.device.type == device for t in [*small.parameters(), *small.buffers()])
        results[device] = (small, out)
    (cpu_net, cpu_out), (gpu_net, gpu_out) = results["cpu"], results["cuda"]
    assert [p.shape for p in cpu_net.parameters()] == [p.shape for p in gpu_net.parameters()]
    # three tuning steps on different kernels: the same sizes, outputs within float32 noise of
    # the kernels (TF32 off by default for convolutions in float32 here) times a few steps
    scale = float(cpu_out.abs().max())
    assert float((gpu_out.cpu() - cpu_out).abs().max()) < 1e-2 * scale
    # the compressed network converts and samples back on the GPU as a plain module too
    imodel = inn.convert(gpu_net, (x.cuda(),), inn.ConvertConfig(permute=False))
    imodel.resize(0.5)
    back = imodel.to_discrete()
    with torch.no_grad():
        y = back(x.cuda())
        assert y.device.type == "cuda" and all(p.device.type == "cuda" for p in back.parameters())
        assert torch.allclose(y, imodel(x.cuda()), atol=1e-4 * float(y.abs().max()))
