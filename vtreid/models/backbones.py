"""ResNet-18/50 and AlexNet written here (no torchvision), with torchvision's state-dict keys.

Keeping the keys identical means an ImageNet checkpoint saved by torchvision loads with
``load_pretrained(model, path)`` from a local file; nothing is ever downloaded. ResNet takes a
``last_stride`` (1 removes the last down-sampling, as the re-ID methods do) and exposes its five stages
(stem, layer1..layer4) so a network can make any prefix modality-specific and share the rest.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, block, layers, last_stride: int = 2, num_classes: int = 1000, width: int = 64):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=last_stride)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        self.out_channels = 8 * width * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stage(self, name: str) -> nn.Module:
        """One of STAGES as a module (the stem wraps conv1, bn1, relu, maxpool: same parameters)."""
        if name == "stem":
            return nn.Sequential(OrderedDict(conv1=self.conv1, bn1=self.bn1, relu=self.relu, maxpool=self.maxpool))
        if name not in self.STAGES:
            raise ValueError(f"stage must be one of {self.STAGES}, got {name!r}")
        return getattr(self, name)

    def features(self, x):
        """The final feature map [B, C, H, W] (no pooling, no fc)."""
        for name in self.STAGES:
            x = self.stage(name)(x)
        return x

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def resnet50(last_stride: int = 2) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), last_stride)


def resnet18(last_stride: int = 2) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), last_stride)


def resnet_tiny(last_stride: int = 2) -> ResNet:
    """One BasicBlock per stage at a quarter of the width (256-d output, ~1.2 M parameters): for tests
    and the synthetic presets that train on a CPU in minutes. It has torchvision's key names but no
    ImageNet weights exist for it."""
    return ResNet(BasicBlock, (1, 1, 1, 1), last_stride, width=32)


class AlexNet(nn.Module):
    """torchvision's AlexNet (features, avgpool, classifier) with the same keys."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        self.out_channels = 4096

    def embed(self, x):
        """fc7 activations [B, 4096]: the features, pooling and classifier without the last layer."""
        return self.classifier[:-1](torch.flatten(self.avgpool(self.features(x)), 1))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def alexnet() -> AlexNet:
    return AlexNet()


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, strict_shapes: bool = True,
                    ignore: tuple[str, ...] = ("fc.", "classifier.6.")) -> tuple[list[str], list[str]]:
    """Load an ImageNet checkpoint from a local file into a backbone with torchvision's keys.

    Accepts a bare state dict or one under "state_dict" / "model"; strips a "module." prefix (data
    parallel checkpoints). Keys starting with ``ignore`` (the ImageNet classifier) are skipped. Returns
    (missing, unexpected) key lists, after printing them; raises FileNotFoundError / ValueError naming
    the file when it is absent, not a checkpoint, or shares no key with the model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ValueError(f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in checkpoint.items() if not k.removeprefix("module.").startswith(ignore)}
    own = model.state_dict()
    if not set(state) & set(own):
        raise ValueError(f"{path} shares no parameter name with {type(model).__name__}; is it the right architecture?")
    if strict_shapes:
        bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
               if k in own and v.shape != own[k].shape]
        if bad:
            raise ValueError(f"{path}: shape mismatch for {', '.join(bad[:5])}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(ignore)]
    if missing or result.unexpected_keys:
        print(f"load_pretrained({path}): missing {missing or 'none'}; unexpected {result.unexpected_keys or 'none'}")
    return missing, list(result.unexpected_keys)
