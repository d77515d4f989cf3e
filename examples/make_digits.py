"""Write scikit-learn's digits (1,797 8x8 images, shipped offline) as an ImageFolder, and two tiny random image
models built from configs (no download), for the image-classification examples:

    python examples/make_digits.py examples/digits
    tuneforge train examples/digits-resnet.yaml
    tuneforge train examples/digits-vit.yaml --set image.cutmix.probability=0.0   # without CutMix

Writes DIR/train/<digit>/*.png (80%, seeded), DIR/test/<digit>/*.png (20%), DIR/tiny-resnet/ and DIR/tiny-vit/
(config, random weights and a 16x16 image processor each). Random weights: the models learn from scratch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from transformers import (ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification,
                          ViTImageProcessor)

IMAGE_SIZE = 16


def write_imagefolder(root: Path, test_share: float = 0.2, seed: int = 0) -> None:
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    cut = int(round(len(order) * (1 - test_share)))
    for position, index in enumerate(order):
        folder = root / ("train" if position < cut else "test") / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[index] * (255 / 16)).astype(np.uint8), mode="L").save(folder / f"{index:04d}.png")


def write_tiny_models(root: Path) -> None:
    processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3,
                                  image_std=[0.5] * 3)
    torch.manual_seed(0)
    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1]))
    vit = ViTForImageClassification(ViTConfig(image_size=IMAGE_SIZE, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64))
    for name, model in (("tiny-resnet", resnet), ("tiny-vit", vit)):
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/make_digits.py OUTPUT_DIR")
    output = Path(sys.argv[1])
    if output.exists() and any(output.iterdir()):
        sys.exit(f"{output}: exists and is not empty; choose another folder")
    write_imagefolder(output)
    write_tiny_models(output)
    print(f"wrote {output}/train, {output}/test, {output}/tiny-resnet, {output}/tiny-vit")
