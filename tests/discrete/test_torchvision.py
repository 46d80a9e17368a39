"""The zoo test on torchvision's and timm's classification models, when they can be imported
(random initialisation: no weights are downloaded). Skipped where they are not installed; on
this project's machines torchvision from PyPI does not import beside the CPU torch wheel. All 12
torchvision models and the 5 timm ones passed in a separate environment (torch 2.14.1,
torchvision 0.29.1, timm 1.0.31) on 2026-11-28 (17 passed in 231 s):

    python3 -m venv venv-tv && venv-tv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    venv-tv/bin/pip install -e ".[test,tsp]" && venv-tv/bin/python -m pytest tests/discrete/test_torchvision.py
"""

from __future__ import annotations

import pytest
import torch

import torchinn as inn

TORCHVISION = ["resnet18", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
               "shufflenet_v2_x0_5", "squeezenet1_0", "densenet121", "regnet_x_400mf", "convnext_tiny",
               "vit_b_16", "swin_t"]
TIMM = ["resnet18", "efficientnet_b0", "mobilenetv3_small_100", "vit_tiny_patch16_224", "convnext_atto"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def check(model: torch.nn.Module, size: int) -> None:
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(2, 3, size, size)
    imodel = inn.convert(model, (x,), inn.ConvertConfig(tsp_time_limit=0.05, unsupported="keep"))
    with torch.no_grad():
        ref = model(x)
        assert rel_err(ref, imodel(x)) <= 1e-4
        imodel.resize(0.5)
        small = imodel.to_discrete()
        assert rel_err(imodel(x), small(x)) <= 1e-4
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_model(name: str) -> None:
    models = pytest.importorskip("torchvision.models")
    model = getattr(models, name)(weights=None)
    check(model, 224 if name in ("vit_b_16", "swin_t") else 64)


@pytest.mark.parametrize("name", TIMM)
def test_timm_model(name: str) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False)
    check(model, 224 if "vit" in name else 64)
