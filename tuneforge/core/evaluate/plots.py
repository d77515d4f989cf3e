"""The confusion-matrix heatmap, readable from 2 to ~100 classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_confusion_matrix(gold: np.ndarray, predicted: np.ndarray, label_names: list[str], path: Path) -> None:
    """Row-normalised heatmap (colour = share of the true class), counts written in cells when few classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    n = len(label_names)
    counts = confusion_matrix(gold, predicted, labels=list(range(n)))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(5.0, 0.22 * n + 3.0), 30.0)
    font = 10 if n <= 10 else max(4.0, 9.0 - n / 15)
    figure, axes = plt.subplots(figsize=(side + 1.5, side))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(n), labels=label_names, rotation=90, fontsize=font)
    axes.set_yticks(range(n), labels=label_names, fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"Confusion matrix ({int(counts.sum())} examples; colour = share of the true class)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font - 1,
                              color="white" if shares[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
