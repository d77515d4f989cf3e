"""Evaluation: metrics (scikit-learn), the confusion-matrix plot and the eval folder.

Takes label names, gold label ids and predicted probabilities; knows nothing of models.
"""

from tuneforge.core.evaluate.metrics import classification_metrics
from tuneforge.core.evaluate.writer import write_evaluation

__all__ = ["classification_metrics", "write_evaluation"]
