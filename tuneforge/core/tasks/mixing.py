"""Image augmentation for the train split: random resized crop and horizontal flip (PIL, per image) and
MixUp / CutMix (tensors, per batch). Validation and test images are never augmented.

MixUp (Zhang et al., 2018): ``x = lam * x_i + (1 - lam) * x_j``, target ``lam * y_i + (1 - lam) * y_j``.
CutMix (Yun et al., 2019): a box of ``x_j`` is pasted into ``x_i``; the target weights are the area shares, so
``lam`` is recomputed from the box actually pasted (it is clipped at the image border).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def random_resized_crop(image, scale: tuple[float, float], rng: random.Random,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """A random crop covering a ``scale`` share of the area with an aspect ratio in ``ratio``, resized back to
    the image's size (the model's processor resizes it to the model's input size afterwards)."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.resize((width, height), box=(left, top, left + w, top + h))
    return image  # no crop fits (a very thin image): keep it whole


def horizontal_flip(image, rng: random.Random):
    """Mirror the image with probability 1/2."""
    from PIL import Image

    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def mixup(pixels: torch.Tensor, targets: torch.Tensor, lam: float, permutation: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend every image (and its one-hot target) with the one ``permutation`` pairs it with."""
    return lam * pixels + (1 - lam) * pixels[permutation], lam * targets + (1 - lam) * targets[permutation]


def cutmix_box(height: int, width: int, lam: float, generator: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of about ``(1 - lam)`` of the area, centred uniformly at random and
    clipped at the border."""
    cut = math.sqrt(1 - lam)
    box_h, box_w = int(round(height * cut)), int(round(width * cut))
    cy, cx = int(generator.integers(height)), int(generator.integers(width))
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h - box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w - box_w // 2, width)
    return top, bottom, left, right


def cutmix(pixels: torch.Tensor, targets: torch.Tensor, lam: float, permutation: torch.Tensor,
           generator: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int, int], float]:
    """Paste a box of each paired image; returns (pixels, targets, box, lam of the pasted area)."""
    height, width = pixels.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam, generator)
    mixed = pixels.clone()
    mixed[..., top:bottom, left:right] = pixels[permutation][..., top:bottom, left:right]
    kept = 1 - (bottom - top) * (right - left) / (height * width)
    return mixed, kept * targets + (1 - kept) * targets[permutation], (top, bottom, left, right), kept


class BatchMixer:
    """Mixes training batches: with probability ``probability`` of the chosen kind, MixUp or CutMix (one of the
    two with equal odds when both are configured), lambda ~ Beta(alpha, alpha). Seeded."""

    def __init__(self, mixup_config, cutmix_config, num_labels: int, seed: int) -> None:
        self.kinds = [(name, config) for name, config in (("mixup", mixup_config), ("cutmix", cutmix_config))
                      if config is not None]
        self.num_labels = num_labels
        self.generator = np.random.default_rng(seed)

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels, labels): unchanged class ids, or mixed pixels with class-probability targets."""
        mixed, targets, _ = self.mix(pixels, labels)
        return mixed, targets

    def mix(self, pixels: torch.Tensor, labels: torch.Tensor, companion: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Like calling the mixer, and ``companion`` (the same images as another model's processor made them,
        e.g. a distillation teacher's, possibly of another size) is mixed with the same draws: the same lambda
        and pairs, and for CutMix the same box in relative coordinates."""
        if not self.kinds or len(labels) < 2:
            return pixels, labels, companion
        name, config = self.kinds[int(self.generator.integers(len(self.kinds)))]
        if self.generator.random() >= config.probability:
            return pixels, labels, companion
        lam = float(self.generator.beta(config.alpha, config.alpha))
        permutation = torch.from_numpy(self.generator.permutation(len(labels)))
        targets = torch.nn.functional.one_hot(labels, self.num_labels).float()
        if name == "mixup":
            mixed, mixed_targets = mixup(pixels, targets, lam, permutation)
            if companion is not None:
                companion, _ = mixup(companion, targets, lam, permutation)
            return mixed, mixed_targets, companion
        mixed, mixed_targets, box, _ = cutmix(pixels, targets, lam, permutation, self.generator)
        if companion is not None:
            companion = paste_box(companion, permutation, box, tuple(pixels.shape[-2:]))
        return mixed, mixed_targets, companion


def paste_box(pixels: torch.Tensor, permutation: torch.Tensor, box: tuple[int, int, int, int],
              size: tuple[int, int]) -> torch.Tensor:
    """CutMix's paste of ``box`` (top, bottom, left, right in an image of ``size``) into ``pixels``, the box
    scaled to ``pixels``' own height and width."""
    height, width = pixels.shape[-2:]
    top, bottom = (round(v * height / size[0]) for v in box[:2])
    left, right = (round(v * width / size[1]) for v in box[2:])
    mixed = pixels.clone()
    mixed[..., top:bottom, left:right] = pixels[permutation][..., top:bottom, left:right]
    return mixed
