"""Small trained networks shipped with torchinn (their checkpoints live in ``torchinn_demo/checkpoints``).

* :mod:`torchinn_demo.models.resnet`: a ResNet for the 28x28 digits (:func:`load_resnet_digits`);
* :mod:`torchinn_demo.models.transformer`: a small vision transformer for the same digits (no
  checkpoint: ``benchmarks/scratch_digits.py`` trains it from scratch);
* the EDSR x2 for super-resolution is in :mod:`torchinn_demo.sr` (:func:`torchinn_demo.sr.load_edsr`).
"""

from .resnet import DigitsResNet, load_resnet_digits, save_resnet
from .transformer import DigitsTransformer

__all__ = ["DigitsResNet", "DigitsTransformer", "load_resnet_digits", "save_resnet"]
