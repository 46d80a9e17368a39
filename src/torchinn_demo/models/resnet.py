"""A small ResNet for the 28x28 MNIST digits of :func:`torchinn_demo.data.load_digits`.

Three stages of basic blocks (conv3x3-BN-ReLU-conv3x3-BN plus the input, then ReLU), widths
16-32-64 at 28x28, 14x14 and 7x7, a 1x1 conv + BN projection where a stage changes width or
resolution, global average pooling and a linear classifier. The model takes images in [0, 1] and
normalises them itself (a fixed mean and std, buffers), so it needs no preprocessing.
:func:`load_resnet_digits` loads the checkpoint shipped with torchinn, trained by
``benchmarks/train_resnet_digits.py``.

>>> net = DigitsResNet()
>>> net(torch.rand(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "DigitsResNet", "save_resnet", "load_resnet_digits", "CHECKPOINT"]

CHECKPOINT = "resnet_digits.safetensors"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the input (projected by a 1x1 conv + BN when the
    width or the resolution changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class DigitsResNet(nn.Module):
    """ResNet for ``(N, 1, 28, 28)`` digits in [0, 1]: stem conv3x3 + BN + ReLU, ``blocks[i]``
    basic blocks of ``widths[i]`` channels per stage (stride 2 at the start of every stage but the
    first), global average pooling, ``Linear(widths[-1], classes)``."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), blocks: Sequence[int] = (1, 1, 1),
                 classes: int = 10, mean: float = 0.1307, std: float = 0.3081) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths or min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"need one positive block count per positive width, got widths={widths}, "
                             f"blocks={blocks}")
        self.config = {"widths": list(widths), "blocks": list(blocks), "classes": classes,
                       "mean": mean, "std": std}
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        stages = []
        c_in = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [BasicBlock(c_in if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            c_in = w
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem((x - self.mean) / self.std)
        x = self.stages(x)
        return self.fc(x.mean((2, 3)))


def save_resnet(model: DigitsResNet, path: str | Path, **metadata: object) -> None:
    """Write a :class:`DigitsResNet` to a safetensors file with its configuration (and any
    JSON-able ``metadata``: training time, held-out accuracy...)."""
    from torchinn.io.fileio import save_safetensors

    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(model.config), **{k: json.dumps(v) for k, v in metadata.items()}}
    save_safetensors(tensors, path, metadata=meta)


def load_resnet_digits(path: str | Path | None = None) -> tuple[DigitsResNet, dict]:
    """The :class:`DigitsResNet` in ``path`` (default: the checkpoint shipped with torchinn), in
    eval mode, and its metadata (configuration, training time, held-out accuracy...)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path is None:
        path = resources.files("torchinn_demo") / "checkpoints" / CHECKPOINT
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    model = DigitsResNet(**meta["config"])
    model.load_state_dict(load_file(str(path)))
    return model.eval(), meta
