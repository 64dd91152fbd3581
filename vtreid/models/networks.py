"""The five methods' networks (METHODS.md) and ``build_model``.

Every network's forward takes a visible and an infrared batch, [Bv, 3, H, W] and [Bi, 3, H, W] (either,
not both, may be empty; infrared images are three identical channels), and treats their concatenation, visible
rows first, as one batch of Bv + Bi samples. In train mode it returns a dict with what the method's
losses need; in eval mode it returns the test embedding [Bv + Bi, E].
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import AlexNet, ResNet, load_pretrained, resnet18, resnet50, resnet_tiny
from .heads import CSBN, CosineClassifier, GeM, NetworkD, StripeHead, WithNonLocal, linear_classifier

ARCHS = {"resnet50": resnet50, "resnet18": resnet18, "resnet_tiny": resnet_tiny}


def _resnet(arch: str, last_stride: int, pretrained: str | os.PathLike | None) -> ResNet:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    model = ARCHS[arch](last_stride)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def _split(visible: torch.Tensor, infrared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not len(visible) and not len(infrared):   # the two-stream networks failed deep on it
        raise ValueError("visible and infrared are both empty: one of them must hold images")
    if visible.dim() != 4 or infrared.dim() != 4 or visible.shape[1:] != infrared.shape[1:]:
        if visible.numel() and infrared.numel():
            raise ValueError(f"visible and infrared must be [B, 3, H, W] of one image size, got "
                             f"{tuple(visible.shape)} and {tuple(infrared.shape)}")
    return visible, infrared


class ModalityResNet(nn.Module):
    """A ResNet whose first ``specific`` stages (0..5 of stem, layer1..layer4) are separate per modality
    (visible = 0, infrared = 1) and whose remaining stages are shared. specific = 5: two full streams
    (HSME/TSLFN style), 2: stem + layer1 (LCCRF), 0: one shared network (expAT, SphereReID)."""

    def __init__(self, arch: str = "resnet50", specific: int = 0, last_stride: int = 2,
                 pretrained: str | os.PathLike | None = None, non_local: tuple[int, int] = (0, 0)):
        super().__init__()
        if not 0 <= specific <= 5:
            raise ValueError(f"specific must be in 0..5, got {specific}")
        names = ResNet.STAGES
        streams = [_resnet(arch, last_stride, pretrained) for _ in range(2 if specific else 1)]
        shared = streams[0] if specific < 5 else None
        self.out_channels = streams[0].out_channels
        self.specific_stages = nn.ModuleList(
            nn.Sequential(*(s.stage(n) for n in names[:specific])) for s in streams) if specific else None
        stages = []
        for name in names[specific:]:
            stage = shared.stage(name)
            count = {"layer2": non_local[0], "layer3": non_local[1]}.get(name, 0)
            if count:
                channels = stage[-1].conv3.out_channels if hasattr(stage[-1], "conv3") else stage[-1].conv2.out_channels
                stage = WithNonLocal(stage, channels, count)
            stages.append(stage)
        self.shared_stages = nn.Sequential(*stages)

    def forward(self, visible, infrared):
        """(final map of [visible; infrared], output of the last specific stage or None)."""
        if self.specific_stages is None:
            x = torch.cat([visible, infrared])
            return self.shared_stages(x), None
        parts = [self.specific_stages[m](x) for m, x in enumerate((visible, infrared)) if len(x)]
        specific = torch.cat(parts) if parts else None
        return self.shared_stages(specific), specific


class SphereNet(nn.Module):
    """SphereReID: shared ResNet-50, network-D head (1024-d, L2-normalised), cosine classifier s = 14."""

    def __init__(self, num_classes: int, arch: str = "resnet50", last_stride: int = 2, embedding: int = 1024,
                 dropout: float = 0.25, scale: float = 14.0, pretrained=None):
        super().__init__()
        self.backbone = ModalityResNet(arch, 0, last_stride, pretrained)
        self.head = NetworkD(self.backbone.out_channels, embedding, dropout)
        self.classifier = CosineClassifier(embedding, num_classes, scale)

    def forward(self, visible, infrared):
        feature_map, _ = self.backbone(*_split(visible, infrared))
        embedding = self.head(feature_map)
        return {"embedding": embedding} if self.training else embedding


class HSMENet(nn.Module):
    """HSME: per modality its own AlexNet (conv features + fc6/fc7: the "CNN and FC" specific part),
    then a shared FC of size 1024 with dropout and L2 normalisation; Sphere classifier s = 5 whose weight
    starts from a truncated normal (section 3.3). ``decorrelate_classifier`` turns it into D-HSME's
    stage 2 (METHODS.md). arch "alexnet" is the paper's; a ResNet arch (two full ResNet streams, global
    average pooled) is offered for quick CPU runs."""

    def __init__(self, num_classes: int, arch: str = "alexnet", embedding: int = 1024, dropout: float = 0.5,
                 scale: float = 5.0, last_stride: int = 2, pretrained=None):
        super().__init__()
        if arch == "alexnet":
            self.streams = nn.ModuleList(AlexNet(dropout=dropout) for _ in range(2))
            if pretrained:
                for stream in self.streams:
                    load_pretrained(stream, pretrained)
            for stream in self.streams:
                stream.classifier[-1] = nn.Identity()  # the ImageNet fc8 is not used
            width, self.resnet = 4096, None
        else:
            self.streams, self.resnet = None, ModalityResNet(arch, 5, last_stride, pretrained)
            width = self.resnet.out_channels
        self.shared = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, embedding))
        self.classifier = CosineClassifier(embedding, num_classes, scale, init="truncated_normal")

    def forward(self, visible, infrared):
        visible, infrared = _split(visible, infrared)
        if self.resnet is not None:
            specific = F.adaptive_avg_pool2d(self.resnet(visible, infrared)[0], 1).flatten(1)
        else:
            specific = torch.cat([self.streams[m].embed(x) for m, x in enumerate((visible, infrared)) if len(x)])
        embedding = F.normalize(self.shared(specific), dim=1)
        return {"embedding": embedding} if self.training else embedding

    @torch.no_grad()
    def decorrelate_classifier(self) -> None:
        """D-HSME stage 2 (eq. 15, Algorithm 1): with W the Sphere weight as embedding x classes (m x n),
        thin SVD W = U S V^T, replace W by U S and freeze it (the SVDNet-style re-matching is not
        applied). m < n is an error: the paper's decomposition assumes m >= n."""
        w = self.classifier.weight.data.T.double()  # [m, n]
        m, n = w.shape
        if m < n:
            raise ValueError(f"D-HSME needs embedding dimension m >= number of classes n (W is m x n), got m = {m}, "
                             f"n = {n}: raise model.embedding to at least {n} or train fewer identities")
        u, s, _ = torch.linalg.svd(w, full_matrices=False)
        self.classifier.weight.data.copy_((u * s).T.to(self.classifier.weight.dtype))
        self.classifier.weight.requires_grad_(False)


class TSLFN(nn.Module):
    """Hetero-Center's TSLFN: two ResNet-50 branches (last stride 1), 6 stripes, per stripe a shared
    FC 2048 -> 512 + LeakyReLU + BN and its own classifier. Test: the 6 L2-normalised stripes, concatenated."""

    def __init__(self, num_classes: int, arch: str = "resnet50", parts: int = 6, embedding: int = 512,
                 last_stride: int = 1, authors_head: bool = False, pretrained=None):
        super().__init__()
        self.backbone = ModalityResNet(arch, 5, last_stride, pretrained)
        self.head = StripeHead(self.backbone.out_channels, num_classes, parts, embedding, authors_head)

    def forward(self, visible, infrared):
        feature_map, _ = self.backbone(*_split(visible, infrared))
        stripes, logits = self.head(feature_map)
        if self.training:
            return {"stripes": stripes, "logits": logits}
        return F.normalize(stripes, dim=-1).permute(1, 0, 2).flatten(1)


class LCCRFNet(nn.Module):
    """LCCRF: stem + layer1 per modality, layer2..4 shared with non-local blocks (2 in layer2, 3 in
    layer3), GeM (p = 3), BN, classifier. Also the R part descriptors (GeM over R stripes) for the EAT
    compactness term and the modality-specific stage output for CMKD. Test: the BN feature."""

    def __init__(self, num_classes: int, arch: str = "resnet50", parts: int = 6, last_stride: int = 1,
                 gem_p: float = 3.0, learnable_p: bool = False, pretrained=None):
        super().__init__()
        self.backbone = ModalityResNet(arch, 2, last_stride, pretrained, non_local=(2, 3))
        self.pool = GeM(gem_p, learnable_p)
        self.bn = nn.BatchNorm1d(self.backbone.out_channels)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = linear_classifier(self.backbone.out_channels, num_classes, bias=False)
        self.parts = parts

    def forward(self, visible, infrared):
        feature_map, specific = self.backbone(*_split(visible, infrared))
        pooled = self.pool(feature_map).flatten(1)
        feature = self.bn(pooled)
        if not self.training:
            return feature
        parts = self.pool(feature_map, (self.parts, 1)).flatten(2).permute(2, 0, 1)  # [R, B, C]
        return {"pooled": pooled, "feature": feature, "logits": self.classifier(feature), "parts": parts,
                "specific": specific}


class ExpATNet(nn.Module):
    """expAT: one shared ResNet-50 (last stride 1), GAP, CSBN (BatchNorm1d without shift), a shared
    classifier without bias. Test: the CSBN feature. csbn "full" / "none": Table II's variants."""

    def __init__(self, num_classes: int, arch: str = "resnet50", last_stride: int = 1, csbn: str = "csbn",
                 pretrained=None):
        super().__init__()
        self.backbone = ModalityResNet(arch, 0, last_stride, pretrained)
        self.csbn = CSBN(self.backbone.out_channels, csbn)
        self.classifier = linear_classifier(self.backbone.out_channels, num_classes, bias=False)

    def forward(self, visible, infrared):
        feature_map, _ = self.backbone(*_split(visible, infrared))
        pooled = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        feature = self.csbn(pooled)
        if not self.training:
            return feature
        return {"pooled": pooled, "feature": feature, "logits": self.classifier(feature)}


METHODS = {"sphere": SphereNet, "hsme": HSMENet, "dhsme": HSMENet, "hc": TSLFN, "lccrf": LCCRFNet, "expat": ExpATNet}


def build_model(method: str, num_classes: int, **options) -> nn.Module:
    """The network of ``method`` (sphere, hsme, dhsme, hc, lccrf, expat) for ``num_classes`` identities.

    options go to the network: arch ("resnet50"; "resnet18" / "resnet_tiny" for quick CPU runs; HSME's
    default is "alexnet"), last_stride, pretrained (a local ImageNet checkpoint with torchvision keys), and the
    head sizes. D-HSME is HSME's network; its stage 2 calls ``decorrelate_classifier``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return METHODS[method](num_classes, **options)
