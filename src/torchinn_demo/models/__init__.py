"""Small trained networks shipped with torchinn (their checkpoints live in ``torchinn_demo/checkpoints``).

* :mod:`torchinn_demo.models.resnet`: a ResNet for the 28x28 digits (:func:`load_resnet_digits`);
* the EDSR x2 for super-resolution is in :mod:`torchinn_demo.sr` (:func:`torchinn_demo.sr.load_edsr`).
"""

from .resnet import DigitsResNet, load_resnet_digits, save_resnet

__all__ = ["DigitsResNet", "load_resnet_digits", "save_resnet"]
