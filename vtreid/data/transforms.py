"""Image transforms on tensors (no torchvision): resize, pad + random crop, horizontal flip, random
erasing, ImageNet normalisation. Random transforms draw from a torch.Generator so a seeded loader
reproduces its augmentations. Input: [3, H, W] uint8 (infrared already three equal channels)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float(img: torch.Tensor) -> torch.Tensor:
    return img.float().div_(255.0) if img.dtype == torch.uint8 else img.float()


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of a [C, H, W] float image to size = (H, W)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def pad_and_random_crop(img: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` on every side, then crop back to the original size at a random offset."""
    if padding <= 0:
        return img
    h, w = img.shape[-2:]
    padded = F.pad(img, (padding, padding, padding, padding))
    top = int(torch.randint(0, 2 * padding + 1, (1,), generator=generator))
    left = int(torch.randint(0, 2 * padding + 1, (1,), generator=generator))
    return padded[:, top:top + h, left:left + w]


def random_crop(img: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A random size = (H, W) window (SphereReID: resize 288 x 144, crop 256 x 128)."""
    h, w = img.shape[-2:]
    top = int(torch.randint(0, h - size[0] + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size[1] + 1, (1,), generator=generator))
    return img[:, top:top + size[0], left:left + size[1]]


def random_flip(img: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    return img.flip(-1) if float(torch.rand((), generator=generator)) < p else img


def random_erasing(img: torch.Tensor, generator: torch.Generator, p: float = 0.5, area=(0.02, 0.4),
                   aspect=(0.3, 1 / 0.3), value: float = 0.0, attempts: int = 100) -> torch.Tensor:
    """Random erasing as Zhong et al. (AAAI 2020, Alg. 1): with probability p, draw the area S_e uniform in
    ``area`` x H W and the aspect ratio r_e uniform in ``aspect`` (0.3, 1/0.3), h = sqrt(S_e r_e),
    w = sqrt(S_e / r_e); retry until the rectangle fits (at most ``attempts`` times) and fill it with
    ``value``. On a normalised image 0 is the per-channel (ImageNet) mean, the fill their re-ID code uses."""
    if float(torch.rand((), generator=generator)) >= p:
        return img
    h, w = img.shape[-2:]
    for _ in range(attempts):
        target = float(torch.empty(()).uniform_(*area, generator=generator)) * h * w
        ratio = float(torch.empty(()).uniform_(*aspect, generator=generator))
        eh, ew = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < eh < h and 0 < ew < w:
            top = int(torch.randint(0, h - eh + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - ew + 1, (1,), generator=generator))
            img = img.clone()
            img[:, top:top + eh, left:left + ew] = value
            return img
    return img


def random_grayscale(img: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
    """With probability p, the image's luminance (ITU-R 601) in all three channels: a visible image then
    carries what an infrared one can (shape, texture), not colour."""
    if p <= 0 or float(torch.rand((), generator=generator)) >= p:
        return img
    grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    return grey.expand_as(img).clone()


def normalize(img: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    return (img - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class Transform:
    """The training or test pipeline of a method.

    train: resize to ``size`` (or to ``resize_to`` then random-crop ``size``), pad + random crop, flip,
    random greyscale, normalise, random erasing; test: resize to ``test_size`` (default ``resize_to or size``), normalise.
    The defaults add no augmentation (no padding, no flip, no erasing): each method's preset asks for
    what its paper uses (METHODS.md), so nothing is applied that the paper does not name.
    """

    def __init__(self, size=(288, 144), *, train: bool, resize_to=None, padding: int = 0, flip: bool = False,
                 erasing: float = 0.0, grayscale: float = 0.0, test_size=None):
        self.size, self.train, self.resize_to = tuple(size), train, resize_to
        self.padding, self.flip, self.erasing, self.grayscale = padding, flip, erasing, grayscale
        self.test_size = tuple(test_size or resize_to or size)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        img = to_float(img)
        if not self.train:
            return normalize(resize(img, self.test_size))
        generator = generator or torch.Generator().manual_seed(0)
        if self.resize_to:
            img = random_crop(resize(img, self.resize_to), self.size, generator)
        else:
            img = resize(img, self.size)
        img = pad_and_random_crop(img, self.padding, generator)
        if self.flip:
            img = random_flip(img, generator)
        img = random_grayscale(img, generator, self.grayscale)
        img = normalize(img)
        if self.erasing:
            img = random_erasing(img, generator, p=self.erasing)
        return img
