"""Heads and blocks of the five methods' networks (METHODS.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling (LCCRF eq. for GeM): (mean x^p)^(1/p), p = 3, optionally learnable."""

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p))) if learnable else float(p)
        self.eps = eps

    def forward(self, x, output_size=(1, 1)):
        p = self.p
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(p), output_size).pow(1.0 / p)


class NonLocal(nn.Module):
    """Non-local block (Wang et al.) as AGW/LCCRF use it: dot-product affinity divided by the number of
    positions, residual through a zero-initialised BN so the block starts as the identity.
    inter_channels = C / 2; the AGW code's inter_channels = 1 is a known bug and is not copied."""

    def __init__(self, channels: int):
        super().__init__()
        inter = max(1, channels // 2)
        self.g = nn.Conv2d(channels, inter, 1)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.W = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x):
        b, _, h, w = x.shape
        g = self.g(x).flatten(2).transpose(1, 2)          # [B, HW, C']
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [B, HW, C']
        phi = self.phi(x).flatten(2)                      # [B, C', HW]
        affinity = torch.bmm(theta, phi) / (h * w)
        y = torch.bmm(affinity, g).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.W(y)


class WithNonLocal(nn.Module):
    """A ResNet layer with non-local blocks after its last ``count`` bottlenecks (AGW's placement); a
    layer with fewer blocks (the tiny test backbone) gets one per block."""

    def __init__(self, layer: nn.Sequential, channels: int, count: int):
        super().__init__()
        count = min(count, len(layer))
        self.blocks = layer
        self.after = set(range(len(layer) - count, len(layer)))
        self.non_local = nn.ModuleList(NonLocal(channels) for _ in range(count))

    def forward(self, x):
        k = 0
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.after:
                x = self.non_local[k](x)
                k += 1
        return x


class CSBN(nn.BatchNorm1d):
    """Common-space BatchNorm1d shared by both modalities (expAT eq. 14). kind "csbn": scale only, the
    shift is fixed at 0 and not trained (the paper's CSBN); "full": scale and shift (Table II's
    CSBN_Full); "none": no trainable parameter at all (CSBN_None)."""

    KINDS = ("csbn", "full", "none")

    def __init__(self, features: int, kind: str = "csbn"):
        if kind not in self.KINDS:
            raise ValueError(f"csbn must be one of {self.KINDS}, got {kind!r}")
        super().__init__(features, affine=kind != "none")
        if kind == "csbn":
            nn.init.zeros_(self.bias)
            self.bias.requires_grad_(False)


class NetworkD(nn.Module):
    """SphereReID's head "network-D": GAP, BN, Dropout, FC (with bias), BN, L2 normalisation.
    Dropout 0.25 is section 4.3's final network (the 94.4 result); 0.5 the paper's earlier setting."""

    def __init__(self, in_features: int = 2048, embedding: int = 1024, dropout: float = 0.25):
        super().__init__()
        self.bn1 = nn.BatchNorm1d(in_features)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, embedding)
        self.bn2 = nn.BatchNorm1d(embedding)

    def forward(self, feature_map):
        x = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        return F.normalize(self.bn2(self.fc(self.dropout(self.bn1(x)))), dim=1)


class StripeHead(nn.Module):
    """TSLFN: the map split into ``parts`` horizontal stripes, each average-pooled, then per stripe an
    FC (shared by the two branches because this module is), LeakyReLU and BN, and its own classifier.

    authors_head=True is the Hetero-Center authors' code instead: per stripe FC -> BN gives the stripe
    feature (used for the HC loss and the test), and LeakyReLU + Dropout(0.5) sit inside the classifier."""

    def __init__(self, in_features: int, num_classes: int, parts: int = 6, embedding: int = 512,
                 authors_head: bool = False):
        super().__init__()
        self.parts = parts
        if authors_head:
            reduce = lambda: nn.Sequential(nn.Linear(in_features, embedding), nn.BatchNorm1d(embedding))  # noqa: E731
            classifier = lambda: nn.Sequential(nn.LeakyReLU(0.1), nn.Dropout(0.5),  # noqa: E731
                                               nn.Linear(embedding, num_classes))
        else:
            reduce = lambda: nn.Sequential(nn.Linear(in_features, embedding), nn.LeakyReLU(0.1),  # noqa: E731
                                           nn.BatchNorm1d(embedding))
            classifier = lambda: nn.Linear(embedding, num_classes)  # noqa: E731
        self.reduce = nn.ModuleList(reduce() for _ in range(parts))
        self.classifiers = nn.ModuleList(classifier() for _ in range(parts))

    def forward(self, feature_map):
        pooled = F.adaptive_avg_pool2d(feature_map, (self.parts, 1)).flatten(2)  # [B, C, parts]
        stripes = torch.stack([self.reduce[k](pooled[:, :, k]) for k in range(self.parts)])  # [parts, B, E]
        logits = torch.stack([self.classifiers[k](stripes[k]) for k in range(self.parts)])
        return stripes, logits


class CosineClassifier(nn.Module):
    """Class weights for the Sphere losses: logits = scale cos(x, w_c), via vtreid.ops.
    init "normal" (std 0.01) or "truncated_normal" (std 0.01 cut at 2 std, as TensorFlow's
    truncated_normal: HSME section 3.3)."""

    def __init__(self, in_features: int, num_classes: int, scale: float, init: str = "normal"):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.scale = scale
        if init == "truncated_normal":
            nn.init.trunc_normal_(self.weight, std=0.01, a=-0.02, b=0.02)
        elif init == "normal":
            nn.init.normal_(self.weight, std=0.01)
        else:
            raise ValueError(f"init must be one of ('normal', 'truncated_normal'), got {init!r}")

    def forward(self, x):
        from vtreid.ops import normalized_logits
        return normalized_logits(x, self.weight, scale=self.scale)


def linear_classifier(in_features: int, num_classes: int, bias: bool = True) -> nn.Linear:
    """Plain FC classifier; without bias it is Kaiming-normal initialised (expAT's shared classifier)."""
    layer = nn.Linear(in_features, num_classes, bias=bias)
    if not bias:
        nn.init.kaiming_normal_(layer.weight, mode="fan_out")
    return layer
