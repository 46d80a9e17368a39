"""Small trained networks shipped with torchinn (their checkpoints live in ``torchinn/checkpoints``).

* :mod:`torchinn.models.resnet`: a ResNet for the 28x28 digits (:func:`load_resnet_digits`);
* the EDSR x2 for super-resolution is in :mod:`torchinn.sr` (:func:`torchinn.sr.load_edsr`).
"""

from .resnet import DigitsResNet, load_resnet_digits, save_resnet

__all__ = ["DigitsResNet", "load_resnet_digits", "save_resnet"]
