"""CNN families users bring, beyond the zoo: compact definitions in torchvision's layouts.

==============  ===========================================================================
name            what it exercises
==============  ===========================================================================
regnet          RegNetX-400MF: grouped 3x3 convs (group width 16), 1x1 bottlenecks
efficientnet    EfficientNet-B0: 3x3 / 5x5 depthwise, squeeze-excite, SiLU
squeezenet      SqueezeNet 1.1: fire modules (1x1 squeeze, 1x1 + 3x3 expand, concat),
                ceil-mode max pools
densenet        DenseNet-121: BN-ReLU-conv pre-activation, concatenated growth
resnet50        ResNet-50: bottlenecks, 1x1 convs up to 2048 channels
inception       GoogLeNet: parallel 1x1 / 3x3 / 3x3-3x3 / pool branches, concat
mobilenetv3     MobileNetV3-Large: hard-swish, squeeze-excite with hard-sigmoid
mnasnet         MnasNet-1.0: 3x3 / 5x5 depthwise inverted residuals
shufflenetv2    ShuffleNetV2 x1.0: channel split, channel shuffle
==============  ===========================================================================

`build(name, tiny=False)`: the 224x224 network with random weights and BatchNorm statistics
measured on random inputs (`zoo.calibrate_batchnorm`); ``tiny=True`` keeps every kind of
block but few of them and narrow, for tests at 64x64. Nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from mdl_tvm.zoo import calibrate_batchnorm, init_like_torchvision


def cbn(cin, cout, k=1, s=1, g=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class SE(nn.Module):
    def __init__(self, c, squeeze, gate=nn.Sigmoid, act=nn.ReLU):
        super().__init__()
        self.fc1, self.act = nn.Conv2d(c, squeeze, 1), act()
        self.fc2, self.gate = nn.Conv2d(squeeze, c, 1), gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class Head(nn.Module):
    def __init__(self, c, classes=10):
        super().__init__()
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


class RegNetBlock(nn.Module):
    def __init__(self, cin, cout, stride, group_width=16):
        super().__init__()
        self.f = nn.Sequential(cbn(cin, cout), cbn(cout, cout, 3, stride, cout // group_width),
                               cbn(cout, cout, act=None))
        self.proj = cbn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None

    def forward(self, x):
        return torch.relu((x if self.proj is None else self.proj(x)) + self.f(x))


def regnet(tiny=False):
    widths, depths = ((32, 64, 160, 384), (1, 2, 7, 12)) if not tiny else ((32, 64), (1, 1))
    layers, cin = [cbn(3, 32, 3, 2)], 32
    for w, d in zip(widths, depths, strict=True):
        for i in range(d):
            layers.append(RegNetBlock(cin, w, 2 if i == 0 else 1))
            cin = w
    return nn.Sequential(*layers, Head(cin))


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, s, expand, se=0.25, act=nn.SiLU, gate=nn.Sigmoid):
        super().__init__()
        hid = cin * expand
        layers = [] if expand == 1 else [cbn(cin, hid, act=act)]
        layers.append(cbn(hid, hid, k, s, hid, act=act))
        if se:
            layers.append(SE(hid, max(1, int(cin * se)), gate, act))
        layers.append(cbn(hid, cout, act=None))
        self.block, self.res = nn.Sequential(*layers), s == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.res else self.block(x)


def efficientnet(tiny=False):
    cfg = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
           (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))
    if tiny:
        cfg = ((1, 16, 1, 1, 3), (6, 24, 1, 2, 5))
    layers, cin = [cbn(3, 32, 3, 2, act=nn.SiLU)], 32
    for t, c, n, s, k in cfg:
        for i in range(n):
            layers.append(MBConv(cin, c, k, s if i == 0 else 1, t))
            cin = c
    return nn.Sequential(*layers, cbn(cin, 1280 if not tiny else 64, act=nn.SiLU),
                         Head(1280 if not tiny else 64))


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.s = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x):
        x = self.s(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def squeezenet(tiny=False):
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    fires = [(64, 16, 64), (128, 16, 64), "M", (128, 32, 128), (256, 32, 128), "M",
             (256, 48, 192), (384, 48, 192), (384, 64, 256), (512, 64, 256)]
    if tiny:
        fires = [(64, 16, 32), "M", (64, 16, 32)]
    layers = [nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool]
    for f in fires:
        layers.append(nn.MaxPool2d(3, 2, ceil_mode=True) if f == "M" else Fire(*f))
    cin = fires[-1][2] * 2
    return nn.Sequential(*layers, nn.Dropout(0.5), nn.Conv2d(cin, 10, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1,
                                                                          bias=False),
                               nn.BatchNorm2d(4 * growth), nn.ReLU(),
                               nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


def densenet(tiny=False):
    growth, blocks = (32, (6, 12, 24, 16)) if not tiny else (8, (2, 2))
    cin = 64 if not tiny else 16
    layers = [nn.Conv2d(3, cin, 7, 2, 3, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    for i, n in enumerate(blocks):
        for _ in range(n):
            layers.append(DenseLayer(cin, growth))
            cin += growth
        if i < len(blocks) - 1:
            layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cin // 2, 1, bias=False),
                       nn.AvgPool2d(2, 2)]
            cin //= 2
    return nn.Sequential(*layers, nn.BatchNorm2d(cin), nn.ReLU(), Head(cin))


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, stride):
        super().__init__()
        cout = mid * 4
        self.f = nn.Sequential(cbn(cin, mid), cbn(mid, mid, 3, stride), cbn(mid, cout, act=None))
        self.proj = cbn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None

    def forward(self, x):
        return torch.relu((x if self.proj is None else self.proj(x)) + self.f(x))


def resnet50(tiny=False):
    depths = (3, 4, 6, 3) if not tiny else (1, 1)
    layers, cin = [cbn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for i, d in enumerate(depths):
        for j in range(d):
            layers.append(Bottleneck(cin, 64 * 2**i, 2 if i and j == 0 else 1))
            cin = 64 * 2**i * 4
    return nn.Sequential(*layers, Head(cin))


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, cp):
        super().__init__()
        self.b1 = cbn(cin, c1)
        self.b2 = nn.Sequential(cbn(cin, c3r), cbn(c3r, c3, 3))
        self.b3 = nn.Sequential(cbn(cin, c5r), cbn(c5r, c5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), cbn(cin, cp))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def inception(tiny=False):
    cfg = [(192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), "M",
           (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64),
           (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
           (528, 256, 160, 320, 32, 128, 128), "M", (832, 256, 160, 320, 32, 128, 128),
           (832, 384, 192, 384, 48, 128, 128)]
    if tiny:
        cfg = [(192, 32, 32, 48, 8, 16, 16), "M", (112, 32, 32, 48, 8, 16, 16)]
    layers = [cbn(3, 64, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True), cbn(64, 64),
              cbn(64, 192, 3), nn.MaxPool2d(3, 2, ceil_mode=True)]
    for c in cfg:
        layers.append(nn.MaxPool2d(3, 2, ceil_mode=True) if c == "M" else Inception(*c))
    last = cfg[-1]
    return nn.Sequential(*layers, Head(last[1] + last[3] + last[5] + last[6]))


def mobilenetv3(tiny=False):
    hs, re = nn.Hardswish, nn.ReLU
    cfg = ((3, 16, 16, False, re, 1), (3, 64, 24, False, re, 2), (3, 72, 24, False, re, 1),
           (5, 72, 40, True, re, 2), (5, 120, 40, True, re, 1), (5, 120, 40, True, re, 1),
           (3, 240, 80, False, hs, 2), (3, 200, 80, False, hs, 1), (3, 184, 80, False, hs, 1),
           (3, 184, 80, False, hs, 1), (3, 480, 112, True, hs, 1), (3, 672, 112, True, hs, 1),
           (5, 672, 160, True, hs, 2), (5, 960, 160, True, hs, 1), (5, 960, 160, True, hs, 1))
    if tiny:
        cfg = cfg[:2] + ((5, 72, 40, True, hs, 2),)
    layers, cin = [cbn(3, 16, 3, 2, act=hs)], 16
    for k, exp, c, se, act, s in cfg:
        layers.append(MBConvV3(cin, exp, c, k, s, se, act))
        cin = c
    return nn.Sequential(*layers, cbn(cin, 6 * cin, act=hs), Head(6 * cin))


class MBConvV3(nn.Module):
    def __init__(self, cin, hid, cout, k, s, se, act):
        super().__init__()
        layers = [] if hid == cin else [cbn(cin, hid, act=act)]
        layers.append(cbn(hid, hid, k, s, hid, act=act))
        if se:
            layers.append(SE(hid, _div8(hid // 4), nn.Hardsigmoid, nn.ReLU))
        layers.append(cbn(hid, cout, act=None))
        self.block, self.res = nn.Sequential(*layers), s == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.res else self.block(x)


def _div8(v: int) -> int:
    return max(8, (v + 4) // 8 * 8)


def mnasnet(tiny=False):
    cfg = ((3, 3, 24, 3, 2), (5, 3, 40, 3, 2), (5, 6, 80, 3, 2), (3, 6, 96, 2, 1),
           (5, 6, 192, 4, 2), (3, 6, 320, 1, 1))
    if tiny:
        cfg = ((3, 3, 24, 1, 2), (5, 3, 40, 1, 2))
    layers = [cbn(3, 32, 3, 2), cbn(32, 32, 3, 1, 32), cbn(32, 16, act=None)]
    cin = 16
    for k, t, c, n, s in cfg:
        for i in range(n):
            layers.append(MBConv(cin, c, k, s if i == 0 else 1, t, se=0, act=nn.ReLU))
            cin = c
    return nn.Sequential(*layers, cbn(cin, 1280), Head(1280))


def channel_shuffle(x, groups: int = 2):
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.left = nn.Sequential(cbn(cin, cin, 3, stride, cin, act=None), cbn(cin, half))
        right_in = cin if stride > 1 else half
        self.right = nn.Sequential(cbn(right_in, half), cbn(half, half, 3, stride, half, act=None),
                                   cbn(half, half))

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return channel_shuffle(out)


def shufflenetv2(tiny=False):
    stages, widths = ((4, 8, 4), (116, 232, 464)) if not tiny else ((2, 1), (48, 96))
    layers, cin = [cbn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)], 24
    for n, w in zip(stages, widths, strict=True):
        for i in range(n):
            layers.append(ShuffleUnit(cin, w, 2 if i == 0 else 1))
            cin = w
    return nn.Sequential(*layers, cbn(cin, 1024 if not tiny else 128),
                         Head(1024 if not tiny else 128))


FAMILIES = {"regnet": regnet, "efficientnet": efficientnet, "squeezenet": squeezenet,
            "densenet": densenet, "resnet50": resnet50, "inception": inception,
            "mobilenetv3": mobilenetv3, "mnasnet": mnasnet, "shufflenetv2": shufflenetv2}
INPUT_SHAPE, TINY_SHAPE = (1, 3, 224, 224), (1, 3, 64, 64)


def build(name: str, tiny: bool = False, seed: int = 0) -> nn.Module:
    """Family `name` (see `FAMILIES`) with seeded weights, in eval mode."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    model = init_like_torchvision(FAMILIES[name](tiny))
    shape = (4,) + (TINY_SHAPE if tiny else INPUT_SHAPE)[1:]
    return calibrate_batchnorm(model, shape).eval()
