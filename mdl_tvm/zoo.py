"""A small model zoo: PyTorch definitions only, nothing is downloaded.

==============  =====================  ===========================================
name            default input          notes
==============  =====================  ===========================================
lenet5          1x1x28x28              LeCun et al. 1998, ReLU + max-pool variant
alexnet         1x1x28x28              AlexNet-style CNN sized for 28x28 images
vgg11           1x1x28x28              VGG-11-style (8 conv + 3 dense, BN), 28x28
resnet18        1x3x224x224            He et al. 2016, torchvision layout
mobilenetv2     1x3x224x224            Sandler et al. 2018, torchvision layout
resnet20        1x1x28x28              He et al. 2016 CIFAR ResNet-20 (16/32/64), 1x1 shortcuts
mobilenetv2s    1x1x28x28              a small MobileNetV2 (stride-2 stem, 4 stages, 256-wide)
==============  =====================  ===========================================

`build(name, num_classes=10, in_channels=None)` returns an initialised module (BatchNorm
statistics measured on random inputs);
`INPUT_SHAPES[name]` its default input shape.
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class AlexNetS(nn.Module):
    """AlexNet's shape (5 conv, 3 dense, ReLU, max-pool) scaled to 28x28 inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7
            nn.Conv2d(128, 192, 3, padding=1), nn.ReLU(),
            nn.Conv2d(192, 128, 3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 3 * 3, 512), nn.ReLU(),
            nn.Dropout(0.3), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class VGG11S(nn.Module):
    """VGG-11's configuration (A) at half width, with BatchNorm, for 28x28 inputs."""

    CONFIG = (32, "M", 64, "M", 128, 128, "M", 256, 256, 256, 256)

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in self.CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item),
                           nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers, nn.MaxPool2d(3))  # 3x3 -> 1x1
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        init_like_torchvision(self)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def init_like_torchvision(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan-out) convs, unit BatchNorm, small dense: torchvision's scheme.

    PyTorch's default init makes deep nets without it (MobileNetV2) output near-constants.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
    return model


def _conv_bn(cin, cout, kernel, stride, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   _conv_bn(hidden, cout, 1, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 32, 3, 2)]
        cin = 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        init_like_torchvision(self)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class ResNet20(nn.Module):
    """He et al. 2016's CIFAR ResNet-20 (3 stages x 3 basic blocks, widths 16/32/64) for
    28x28 inputs, with 1x1-conv shortcuts where the shape changes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        blocks, cin = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(3):
                blocks.append(BasicBlock(cin, width, 2 if stage and i == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        init_like_torchvision(self)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


class MobileNetV2S(nn.Module):
    """A small MobileNetV2 (inverted residuals, depthwise 3x3, ReLU6) for 28x28 inputs."""

    SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 2, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 16, 3, 2)]
        cin = 16
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn(cin, 256, 1, 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(256, num_classes)
        init_like_torchvision(self)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


MODELS = {
    "lenet5": LeNet5,
    "alexnet": AlexNetS,
    "vgg11": VGG11S,
    "resnet18": ResNet18,
    "mobilenetv2": MobileNetV2,
    "resnet20": ResNet20,
    "mobilenetv2s": MobileNetV2S,
}

INPUT_SHAPES = {
    "lenet5": (1, 1, 28, 28),
    "alexnet": (1, 1, 28, 28),
    "vgg11": (1, 1, 28, 28),
    "resnet18": (1, 3, 224, 224),
    "mobilenetv2": (1, 3, 224, 224),
    "resnet20": (1, 1, 28, 28),
    "mobilenetv2s": (1, 1, 28, 28),
}

FASHION_MNIST_MODELS = ("lenet5", "alexnet", "vgg11", "resnet20", "mobilenetv2s")


def build(name: str, num_classes: int = 10, in_channels: int | None = None,
          seed: int = 0) -> nn.Module:
    """Return zoo model `name`, initialised with `seed`, in eval mode."""
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; choose one of {', '.join(MODELS)}")
    if in_channels is None:
        in_channels = INPUT_SHAPES[name][1]
    torch.manual_seed(seed)
    model = MODELS[name](num_classes=num_classes, in_channels=in_channels)
    return calibrate_batchnorm(model, (4, in_channels) + INPUT_SHAPES[name][2:]).eval()


def calibrate_batchnorm(model: nn.Module, shape, steps: int = 2) -> nn.Module:
    """Give BatchNorm layers running statistics from random inputs (no weight change).

    An untrained net in eval mode with unit statistics shrinks activations layer by layer
    (MobileNetV2 outputs ~1e-9); measured statistics keep them at a realistic scale, so
    numerical tests compare meaningful values.
    """
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momentum = {m: m.momentum for m in norms}
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average over the steps
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(shape))
    for module in norms:  # training afterwards keeps the usual exponential average
        module.momentum = momentum[module]
    return model
