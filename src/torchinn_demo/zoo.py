"""A zoo of small networks with the structure of real ones, for tracing and conversion tests.

Every entry of :data:`ZOO` is a builder ``() -> (model, example_inputs)``:

* ``model`` is returned **in eval mode** (conversion works on eval models: BatchNorm uses its
  running statistics, dropout is off);
* ``example_inputs`` is a tuple of tensors, batch size 2, to call ``model(*example_inputs)``.

The builders draw everything (weights, norm statistics, inputs) from torch's global RNG, so
``torch.manual_seed(s)`` before a call makes it deterministic. No downloads, no torchvision.

Widths are small (every forward runs in milliseconds on a CPU) but deliberately *distinct*
from one another wherever the architecture allows (8, 12, 20, ... rather than 16 everywhere),
so that a tracer that confuses two dimensions fails loudly instead of by luck.

Norm layers are not left at their trivial initialisation: affine parameters are randomised and
BatchNorm running statistics are calibrated on the example inputs (one forward in train mode
with cumulative averaging), so BN folding and channel resampling are tested on non-trivial
values and activations stay well scaled.

The network's inputs (e.g. the 3 RGB channels) and outputs (logits, output image channels) are
fixed dimensions; everything in between is a channel group a converter should find.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ZOO", "register"]

Builder = Callable[[], "tuple[nn.Module, tuple[torch.Tensor, ...]]"]

ZOO: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register a builder under ``name`` in :data:`ZOO`."""

    def deco(fn: Builder) -> Builder:
        if name in ZOO:
            raise ValueError(f"zoo entry {name!r} registered twice")
        ZOO[name] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------- helpers

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def _finish(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[nn.Module, tuple]:
    """Randomise norm affine params, calibrate BN running stats on ``inputs``, return eval model."""
    for m in model.modules():
        if isinstance(m, _BN) and m.affine:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
            m.weight.copy_(1.0 + 0.2 * torch.randn_like(m.weight))
            if m.bias is not None:
                m.bias.normal_(0.0, 0.1)
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    if bns:
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch -> exactly its statistics
        model.train()
        model(*inputs)
        for m, mom in zip(bns, saved):
            m.momentum = mom
    model.eval()
    return model, inputs


def _img(c: int = 3, h: int = 16, w: int | None = None, n: int = 2) -> torch.Tensor:
    return torch.randn(n, c, h, h if w is None else w)


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


# ----------------------------------------------------------------------------- MLP


@register("mlp")
def mlp() -> tuple[nn.Module, tuple]:
    """Plain MLP 32 -> 48 -> 24 -> 10: Linear/ReLU chain, two hidden widths, Dropout."""
    model = nn.Sequential(
        nn.Linear(32, 48), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(48, 24), nn.ReLU(),
        nn.Linear(24, 10),
    )
    return _finish(model, (torch.randn(2, 32),))


# ----------------------------------------------------------------------------- VGG


class VGG(nn.Module):
    """VGG-style: conv-BN-ReLU stacks, max-pool, adaptive avg-pool to 2x2, nn.Flatten ->
    Linear(C*4) -> ReLU -> Dropout -> Linear.  The first classifier Linear has
    in_features = channels x 4 positions (channel-major blocks of 4)."""

    def __init__(self, cfg=(8, "M", 12, 12, "M", 20, "M"), num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * 4, 28), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(28, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


@register("vgg_bn")
def vgg_bn() -> tuple[nn.Module, tuple]:
    """VGG with BatchNorm (conv biases + BN), max-pool, nn.Flatten of a 20x2x2 map into Linear(80)."""
    return _finish(VGG(), (_img(h=16),))


# ----------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision-style bottleneck (stride on the 3x3), optional groups (ResNeXt)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision-style ResNet; ``imagenet_stem`` selects 7x7/2 conv + max-pool over a 3x3 conv."""

    def __init__(self, block, layers, widths, num_classes: int = 10, stem: int = 8,
                 imagenet_stem: bool = False, **block_kw):
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = stem
        self.num_stages = len(layers)
        for i, (n, planes) in enumerate(zip(layers, widths)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, n, 1 if i == 0 else 2, **block_kw))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, block, planes, blocks, stride, **kw):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, **kw)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000) -> ResNet:
    """Full-size ResNet-18 (11.7 M parameters) for timing; not in the zoo."""
    return ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, stem=64, imagenet_stem=True)


def resnet50(num_classes: int = 1000) -> ResNet:
    """Full-size ResNet-50 (25.6 M parameters) for timing; not in the zoo."""
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, stem=64, imagenet_stem=True)


@register("resnet_basic")
def resnet_basic() -> tuple[nn.Module, tuple]:
    """ResNet, basic blocks [2, 2, 1], widths 8/12/20: identity shortcuts (in-place +=) and
    strided 1x1-conv+BN downsample shortcuts; avg-pool, flatten, fc."""
    return _finish(ResNet(BasicBlock, [2, 2, 1], [8, 12, 20]), (_img(h=16),))


@register("resnet_bottleneck")
def resnet_bottleneck() -> tuple[nn.Module, tuple]:
    """ResNet, bottleneck blocks (1x1 -> 3x3/stride -> 1x1 x4) [1, 2, 1], ImageNet stem
    (7x7/2 + max-pool); downsample 1x1-conv+BN also in stage 1 (channel expansion, stride 1)."""
    return _finish(ResNet(Bottleneck, [1, 2, 1], [4, 6, 10], stem=8, imagenet_stem=True),
                   (_img(h=32),))


@register("resnext")
def resnext() -> tuple[nn.Module, tuple]:
    """ResNeXt: bottleneck blocks whose 3x3 conv is grouped (groups=4, not depthwise);
    group structure must be kept (pruning per group)."""
    model = ResNet(Bottleneck, [1, 1, 1], [4, 8, 8], stem=8, groups=4, base_width=32)
    return _finish(model, (_img(h=16),))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016): BN-ReLU before each conv; the identity shortcut
    is x itself, taken *before* bn1; a projection shortcut instead reads relu(bn1(x))."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != planes:
            self.shortcut = nn.Conv2d(cin, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, widths=(8, 12, 20), blocks=(2, 2, 1), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        layers, c = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(PreActBlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.flatten(1))


@register("preact_resnet")
def preact_resnet() -> tuple[nn.Module, tuple]:
    """Pre-activation ResNet: BN-ReLU-conv order, identity shortcut before BN, 1x1 projection
    shortcut from the activated input, final BN-ReLU, F.adaptive_avg_pool2d, Tensor.flatten."""
    return _finish(PreActResNet(), (_img(h=16),))


# ----------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-conv1x1(bn_size*k)-BN-ReLU-conv3x3(k)."""

    def __init__(self, cin: int, growth: int, bn_size: int = 2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(out)))


class DenseBlockList(nn.Module):
    """torchvision style: keep a list of feature maps, each layer reads torch.cat(features, 1)."""

    def __init__(self, n: int, cin: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class DenseBlockProgressive(nn.Module):
    """CIFAR style: x = torch.cat([x, layer(x)], 1) after every layer."""

    def __init__(self, n: int, cin: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    def __init__(self, stem: int = 10, growth: int = 6, n1: int = 3, n2: int = 2, num_classes: int = 10):
        super().__init__()
        self.conv0 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        c = stem
        self.block1 = DenseBlockList(n1, c, growth)
        c += n1 * growth
        self.trans1 = Transition(c, c // 2)
        c //= 2
        self.block2 = DenseBlockProgressive(n2, c, growth)
        c += n2 * growth
        self.norm5 = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.block2(self.trans1(self.block1(self.conv0(x))))
        x = F.relu(self.norm5(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


@register("densenet")
def densenet() -> tuple[nn.Module, tuple]:
    """DenseNet-BC: concatenation of growing feature maps (list-style block, then a progressive
    cat block), BN on concatenated inputs (a BN spanning several groups), transition
    BN-ReLU-conv1x1-avgpool, growth 6 from a stem of 10."""
    return _finish(DenseNet(), (_img(h=16),))


# ----------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),  # linear bottleneck
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, out channels c, repeats n, stride s)
    CFG = ((1, 6, 1, 1), (4, 10, 2, 2), (4, 14, 2, 2))

    def __init__(self, stem: int = 8, last: int = 40, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6(inplace=True))]
        c = stem
        for t, cout, n, s in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
        layers.append(nn.Sequential(
            nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


@register("mobilenet_v2")
def mobilenet_v2() -> tuple[nn.Module, tuple]:
    """MobileNetV2: depthwise 3x3 (groups == channels), inverted residual with expansion 4
    (hidden width tied to the depthwise conv), linear bottleneck, ReLU6, residual adds
    between equal-shape blocks, 1x1 head conv, Dropout + Linear classifier."""
    return _finish(MobileNetV2(), (_img(h=32),))


# ----------------------------------------------------------------------------- SE net


class SELinear(nn.Module):
    """Classic SE (Hu et al.): avg-pool, view(b, c), FC-ReLU-FC-sigmoid, view(b, c, 1, 1),
    x * y.expand_as(x)."""

    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c // reduction, c, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SEConv(nn.Module):
    """torchvision-style SqueezeExcitation with 1x1 convs (with bias) and broadcasting multiply."""

    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return s * x


class SEBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, se: nn.Module):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, cout, 3, stride),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.se = se
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.se(self.body(x)) + self.shortcut(x))


@register("se_net")
def se_net() -> tuple[nn.Module, tuple]:
    """SE-ResNet-style: residual blocks with squeeze-excitation (global pool -> FC -> ReLU ->
    FC -> sigmoid -> channel multiply) in two variants: Linear + view/expand_as, and 1x1 convs
    + broadcasting multiply; identity and projection shortcuts."""
    model = nn.Sequential(
        conv_bn_relu(3, 12),
        SEBlock(12, 12, 1, SELinear(12, 4)),
        SEBlock(12, 20, 2, SEConv(20, 6)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 10),
    )
    return _finish(model, (_img(h=16),))


# ----------------------------------------------------------------------------- EDSR


class ResidualBlockNoBN(nn.Module):
    """EDSR residual block: conv-ReLU-conv, no BN, output scaled by res_scale then added."""

    def __init__(self, c: int, res_scale: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class EDSR(nn.Module):
    """BasicSR-style EDSR: mean-shift buffer over RGB, conv_first, residual body, conv_after_body,
    global skip, conv + PixelShuffle(2) upsampler, conv_last, add the mean back."""

    def __init__(self, c: int = 16, n_blocks: int = 3, scale: int = 2, img_range: float = 255.0):
        super().__init__()
        self.img_range = img_range
        self.register_buffer("mean", torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1))
        self.conv_first = nn.Conv2d(3, c, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(c, 0.1) for _ in range(n_blocks)))
        self.conv_after_body = nn.Conv2d(c, c, 3, 1, 1)
        self.upsample = nn.Sequential(nn.Conv2d(c, c * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))
        self.conv_last = nn.Conv2d(c, 3, 3, 1, 1)

    def forward(self, x):
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        res = self.conv_after_body(self.body(x))
        res = res + x
        x = self.conv_last(self.upsample(res))
        return x / self.img_range + self.mean


@register("edsr")
def edsr() -> tuple[nn.Module, tuple]:
    """EDSR x2 super-resolution: residual blocks without BN scaled by 0.1, global skip,
    conv -> PixelShuffle(2) upsampler (conv out channels = 4 x group), 3-channel input and
    output with an RGB mean buffer (fixed dims), output is 2x the input size."""
    return _finish(EDSR(), (torch.rand(2, 3, 12, 12),))


# ----------------------------------------------------------------------------- U-Net


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, mid: int | None = None):
        mid = mid or cout
        super().__init__(conv_bn_relu(cin, mid), conv_bn_relu(mid, cout))


class Up(nn.Module):
    """Milesial-style up block: upsample x1, pad to x2's size, cat([x2, x1]), DoubleConv."""

    def __init__(self, cin: int, cskip: int, cout: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
            cup = cin // 2
        elif mode == "upsample":
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            cup = cin
        else:  # functional interpolate
            self.up = nn.Identity()
            cup = cin
        self.conv = DoubleConv(cskip + cup, cout)

    def forward(self, x1, x2):
        if self.mode == "interpolate":
            x1 = F.interpolate(x1, size=x2.shape[-2:], mode="nearest")
        else:
            x1 = self.up(x1)
        dy, dx = x2.size(2) - x1.size(2), x2.size(3) - x1.size(3)
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class UNet(nn.Module):
    def __init__(self, cin: int = 3, n_classes: int = 2, w=(6, 10, 14, 18)):
        super().__init__()
        self.inc = DoubleConv(cin, w[0])
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(w[0], w[1]))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(w[1], w[2]))
        self.down3 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(w[2], w[3]))
        self.up1 = Up(w[3], w[2], 12, "transpose")
        self.up2 = Up(12, w[1], 8, "upsample")
        self.up3 = Up(8, w[0], 8, "interpolate")
        self.outc = nn.Conv2d(8, n_classes, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(x4, x3)
        x = self.up2(x, x2)
        x = self.up3(x, x1)
        return self.outc(x)


@register("unet")
def unet() -> tuple[nn.Module, tuple]:
    """U-Net: max-pool down path, three up paths (ConvTranspose2d, nn.Upsample bilinear,
    F.interpolate nearest), F.pad to the skip's size, skip concatenation cat([skip, up]),
    1x1 output conv to 2 classes (per-pixel output, same H x W as the input)."""
    return _finish(UNet(), (_img(h=24),))


# ----------------------------------------------------------------------------- ViTs


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimmAttention(nn.Module):
    """timm-style attention: fused qkv Linear, reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4),
    unbind, F.scaled_dot_product_attention, transpose(1, 2).reshape(B, N, C), proj."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class TorchMHA(nn.Module):
    """nn.MultiheadAttention (batch_first) used as self-attention, weights not returned."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, attn: nn.Module, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, attn: str, dim: int, heads: int, hidden: int, depth: int = 2,
                 patch: int = 4, img: int = 16, pool: str = "cls", num_classes: int = 10):
        super().__init__()
        self.pool = pool
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        n = (img // patch) ** 2 + (1 if pool == "cls" else 0)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        make = TorchMHA if attn == "mha" else TimmAttention
        self.blocks = nn.Sequential(*(EncoderBlock(dim, make(dim, heads), hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # B, N, C
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos_embed)
        x = self.norm(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        return self.head(x)


@register("vit_mha")
def vit_mha() -> tuple[nn.Module, tuple]:
    """ViT (pre-norm) with nn.MultiheadAttention (dim 24, 4 heads of 6): patch-embedding conv,
    flatten(2).transpose, class token (cat) + position embedding (add) as bare Parameters,
    LayerNorm, GELU MLP (hidden 40), residual stream, class-token pooling, head."""
    return _finish(ViT("mha", dim=24, heads=4, hidden=40, pool="cls"), (_img(h=16),))


@register("vit_timm")
def vit_timm() -> tuple[nn.Module, tuple]:
    """ViT with timm-style attention (dim 24, 3 heads of 8): fused qkv Linear, reshape to
    (B, N, 3, heads, head_dim) + permute + unbind, F.scaled_dot_product_attention (scale
    from the actual head_dim), proj; GELU MLP (hidden 36), mean pooling, no class token."""
    return _finish(ViT("timm", dim=24, heads=3, hidden=36, pool="avg"), (_img(h=16),))


# ----------------------------------------------------------------------------- 1-D


@register("conv1d")
def conv1d() -> tuple[nn.Module, tuple]:
    """1-D conv net on (B, 4, 64) signals: Conv1d-BN1d-ReLU, MaxPool1d, strided Conv1d,
    AvgPool1d, AdaptiveAvgPool1d(1) global pool, Flatten, Linear."""
    model = nn.Sequential(
        nn.Conv1d(4, 10, 5, padding=2), nn.BatchNorm1d(10), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(10, 14, 3, stride=2, padding=1), nn.BatchNorm1d(14), nn.ReLU(), nn.AvgPool1d(2),
        nn.Conv1d(14, 18, 3, padding=1), nn.BatchNorm1d(18), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(18, 5),
    )
    return _finish(model, (torch.randn(2, 4, 64),))


# ----------------------------------------------------------------------------- edge cases


class ShapeCheckNet(nn.Module):
    """A forward with Python control flow on shapes (breaks symbolic tracing)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(3, 8), nn.MaxPool2d(2), conv_bn_relu(8, 12))
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        if x.shape[1] != 3:
            raise ValueError(f"expected 3 input channels, got {x.shape[1]}")
        if x.dim() != 4:
            raise ValueError(f"expected a 4-d batch, got {x.dim()} dims")
        x = self.features(x)
        return self.fc(x.mean(dim=(2, 3)))


@register("shape_check")
def shape_check() -> tuple[nn.Module, tuple]:
    """`if x.shape[1] != 3: raise ValueError(...)` in forward (data-independent shape
    control flow), then conv-BN-ReLU, max-pool, spatial mean, Linear."""
    return _finish(ShapeCheckNet(), (_img(h=16),))


class FlattenNet(nn.Module):
    """conv-BN-ReLU x2 with pooling to a 12 x 3 x 3 map, then a flatten variant into Linear(108)."""

    def __init__(self, flatten: str):
        super().__init__()
        self.flatten = flatten
        self.features = nn.Sequential(conv_bn_relu(3, 8), nn.MaxPool2d(2), conv_bn_relu(8, 12),
                                      nn.AdaptiveMaxPool2d(3))
        self.fc1 = nn.Linear(12 * 9, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1) if self.flatten == "view" else torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


@register("view_flatten")
def view_flatten() -> tuple[nn.Module, tuple]:
    """`x.view(x.size(0), -1)` of a 12x3x3 map into Linear(108): in_features = channels x 9
    positions, channel-major; AdaptiveMaxPool2d."""
    return _finish(FlattenNet("view"), (_img(h=16),))


@register("torch_flatten")
def torch_flatten() -> tuple[nn.Module, tuple]:
    """`torch.flatten(x, 1)` of a 12x3x3 map into Linear(108) (same net as view_flatten)."""
    return _finish(FlattenNet("torch"), (_img(h=16),))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.GroupNorm(4, 8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 16, 3, 2, 1)
        self.gn1 = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.gn2 = nn.GroupNorm(4, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(x + self.gn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("groupnorm")
def groupnorm() -> tuple[nn.Module, tuple]:
    """GroupNorm(4 groups) after convs (a channel group whose size must stay a multiple of
    the norm's group count, and whose statistics couple channels), residual add."""
    return _finish(GroupNormNet(), (_img(h=16),))


class FrozenBatchNorm2d(nn.Module):
    """detectron2/torchvision FrozenBatchNorm2d: per-channel affine held in *buffers*."""

    def __init__(self, c: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(c))
        self.register_buffer("bias", torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


class BufferNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, 2, 1, bias=False)
        self.bn2 = FrozenBatchNorm2d(12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@register("channel_buffer")
def channel_buffer() -> tuple[nn.Module, tuple]:
    """FrozenBatchNorm2d: per-channel weight/bias/running stats as buffers (not parameters),
    reshaped to (1, C, 1, 1) in forward; they must be sliced/resampled with the group."""
    model = BufferNet()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.running_mean.normal_(0.0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return _finish(model, (_img(h=16),))


class TiedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_in = nn.Linear(20, 24)
        self.shared = nn.Linear(24, 24)
        self.fc_out = nn.Linear(24, 6)

    def forward(self, x):
        h = F.relu(self.fc_in(x))
        h = F.relu(self.shared(h))
        h = h + F.relu(self.shared(h))  # same module applied twice
        return self.fc_out(h)


@register("tied_weights")
def tied_weights() -> tuple[nn.Module, tuple]:
    """One nn.Linear(24, 24) applied twice: its in and out dimensions, fc_in's output and
    fc_out's input must all be one group (a reused module ties its own in and out)."""
    return _finish(TiedNet(), (torch.randn(2, 20),))


def count_params(model: nn.Module) -> int:
    """Number of parameters (tied ones counted once)."""
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":  # pragma: no cover - a quick listing
    for name, build in ZOO.items():
        torch.manual_seed(0)
        m, inp = build()
        out = m(*inp)
        print(f"{name:18s} params={count_params(m):7d} in={tuple(inp[0].shape)} out={tuple(out.shape)}")
