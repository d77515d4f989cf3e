"""The few lines a finished run or evaluation prints: each split's headline metrics."""

from __future__ import annotations

from pathlib import Path


def print_summary(run_dir: Path, summary: dict, minutes: float) -> None:
    """Print where the run (or evaluation) is and each split's headline metrics."""
    keys = ("accuracy", "f1_micro", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc")
    print(f"\nrun {run_dir} finished in {minutes:.1f} min")
    for split, metrics in summary.items():
        values = ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if metrics.get(k) is not None)
        print(f"  {split:<10} {values} (n={metrics.get('n_examples', '?')})")
