"""``task: multilabel``: any number of labels per text; one sigmoid per label, binary cross-entropy, and
decision thresholds tuned on the validation split after training (``multilabel.thresholds``).

The saved model has ``problem_type: multi_label_classification`` in its config, so
``pipeline("text-classification", model=RUN/model, top_k=None)`` returns sigmoid scores; ``RUN/thresholds.json``
holds the decision thresholds that ``tuneforge predict`` and ``tuneforge eval`` apply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tuneforge.base.recipe import Recipe
from tuneforge.base.errors import UserError
from tuneforge.core.tasks.base import Task
from tuneforge.core.evaluate.learning_guard import LearningSignal
from tuneforge.core.data.multilabel import load_multilabel_data, read_multilabel_split
from tuneforge.core.tasks.classification import load_classifier
from tuneforge.core.data.encode_cache import encode_split_cached
from tuneforge.core.evaluate.multilabel import (choose_thresholds, load_thresholds, multilabel_metrics, save_thresholds,
                                                write_multilabel_evaluation)
from tuneforge.core.evaluate.inference import predict_probabilities
from tuneforge.core.data.batching import EncodedSplit, encode_split
from tuneforge.base.tables import SOURCE_ROW, read_table, write_table
from tuneforge.core.tasks.predictor import Predictor


# Focal loss (Lin et al., 2017): the weight (1 - p_t)^gamma of each term.
FOCAL_GAMMA = 2.0
# Asymmetric loss (Ridnik et al., 2021, the paper's multi-label defaults): negatives weighted by p_m^4 with
# p_m = max(p - 0.05, 0), positives unweighted, so the many easy negatives of sparse labels stop dominating.
ASYMMETRIC_GAMMA_NEGATIVE, ASYMMETRIC_GAMMA_POSITIVE, ASYMMETRIC_CLIP = 4.0, 0.0, 0.05


class MultiLabelLoss(nn.Module):
    """Per-label loss on logits against multi-hot labels (given as integers by the batcher), averaged over every
    (row, label): ``bce`` (binary cross-entropy), ``focal`` or ``asymmetric`` (``multilabel.loss``);
    ``pos_weight`` multiplies each label's positive term."""

    def __init__(self, pos_weight: torch.Tensor | None = None, kind: str = "bce") -> None:
        super().__init__()
        self.kind = kind
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = labels.float()
        if self.kind == "bce":
            return self.bce(logits, targets)
        probability = torch.sigmoid(logits)
        log_positive = nn.functional.logsigmoid(logits)
        if self.kind == "focal":
            gamma_positive = gamma_negative = FOCAL_GAMMA
            negative_probability, log_negative = probability, nn.functional.logsigmoid(-logits)
        else:
            gamma_positive, gamma_negative = ASYMMETRIC_GAMMA_POSITIVE, ASYMMETRIC_GAMMA_NEGATIVE
            negative_probability = (probability - ASYMMETRIC_CLIP).clamp(min=0)
            log_negative = torch.log((1 - negative_probability).clamp(min=1e-8))
        positive = (1 - probability) ** gamma_positive * log_positive
        if self.pos_weight is not None:
            positive = positive * self.pos_weight
        negative = negative_probability ** gamma_negative * log_negative
        return -(targets * positive + (1 - targets) * negative).mean()


def prior_log_odds(multi_hot: np.ndarray) -> np.ndarray:
    """Each label's log prior odds in ``multi_hot`` (rows x labels), with the Jeffreys estimate
    p = (positives + 0.5) / (rows + 1), so that a label never or always on gets a finite bias."""
    multi_hot = np.asarray(multi_hot, dtype=np.float64)
    prior = (multi_hot.sum(axis=0) + 0.5) / (len(multi_hot) + 1)
    return np.log(prior / (1 - prior))


def output_layer(model: nn.Module, num_labels: int) -> nn.Linear:
    """The linear layer that writes the ``num_labels`` logits (the last one of that width, e.g. BERT's
    ``classifier``, RoBERTa's ``classifier.out_proj``)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not layers or layers[-1].bias is None:
        raise UserError(f"multilabel.init_bias: prior: no output layer with a bias and {num_labels} outputs in "
                        f"{type(model).__name__}; set multilabel.init_bias: zero")
    return layers[-1]


def balanced_pos_weight(multi_hot: np.ndarray) -> torch.Tensor:
    """negatives / positives per label (1 for a label with no positives in train)."""
    multi_hot = np.asarray(multi_hot, dtype=np.float64)
    positives = multi_hot.sum(axis=0)
    negatives = len(multi_hot) - positives
    return torch.tensor(np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0), dtype=torch.float32)


class MultiLabelTask(Task):
    name = "multilabel"
    learning_signals = (LearningSignal("roc_auc"), LearningSignal("f1_micro"), LearningSignal("f1_macro"))
    learning_fixes = (
        "keep multilabel.init_bias: prior (the default): a zero output bias makes full fine-tuning collapse to "
        "the base rates",
        "a higher head learning rate (multilabel.head_learning_rate) or train.learning_rate",
        "sparse labels: multilabel.pos_weight: balanced or multilabel.loss: asymmetric",
        "check that the labels belong to the texts (a shuffled label column learns nothing)")

    def load_data(self, recipe: Recipe):
        if recipe.train.class_weights != "none":
            raise UserError("train.class_weights is for task classification; for multilabel use "
                            "multilabel.pos_weight: balanced")
        return load_multilabel_data(recipe.data, recipe.train.seed)

    def check_model_config(self, recipe: Recipe, model_config: Any) -> None:
        if getattr(recipe, "distill", None) is not None:
            raise UserError("distill: not supported yet for task multilabel (the distillation loss is a softmax "
                            "KL); remove the distill section")

    def load_model(self, recipe: Recipe, label_names: list[str]):
        tokenizer, model = load_classifier(recipe, label_names)
        # Saved into config.json: transformers' own loss and pipeline() then use sigmoids, not a softmax.
        model.config.problem_type = "multi_label_classification"
        return tokenizer, model

    def before_training(self, recipe: Recipe, data, model, tokenizer, device, autocast_dtype, run_dir: Path,
                        log) -> dict[str, Any]:
        """``multilabel.init_bias: prior``: the output bias starts at each label's log prior odds in train.

        Why: a fresh head outputs logits near 0 (probability 0.5 for every label) while most labels are on for
        a few percent of the rows. At a body learning rate such as 5e-5 the bias moves ~5e-5 per step and
        cannot reach log odds near -3.5 within a run, so the body learns to push every logit down instead —
        its features collapse to one constant and the model predicts the base rates (docs/tasks.md)."""
        if recipe.multilabel.init_bias != "prior":
            return {}
        bias = prior_log_odds(data.train.labels)
        with torch.no_grad():
            layer = output_layer(model, len(data.label_names))
            layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))
        log(f"output bias set to each label's log prior odds in train ({bias.min():.2f} .. {bias.max():.2f})")
        return {}

    def no_learning_baseline(self, recipe: Recipe, data, facts: dict[str, Any]) -> dict[str, Any]:
        """Each label's base rate in train predicted for every validation row (at threshold 0.5, as the epochs'
        validation metrics are): ROC-AUC 0.5, F1 of the labels on for more than half of the rows."""
        prior = np.asarray(data.train.labels, dtype=np.float64).mean(axis=0)
        gold = np.asarray(data.validation.labels, dtype=np.int64)
        return multilabel_metrics(gold, np.tile(prior, (len(gold), 1)), data.label_names, 0.5, per_label=False)

    def optimizer_config(self, recipe: Recipe):
        """``multilabel.head_learning_rate`` (never below ``train.learning_rate``) stands in for an unset
        ``train.head_learning_rate``: the output layer of 28 sparse labels learns too slowly at a body's rate."""
        train, default = recipe.train, recipe.multilabel.head_learning_rate
        if train.head_learning_rate is None and default is not None:
            return train.model_copy(update={"head_learning_rate": max(default, train.learning_rate)})
        return train

    def encode(self, preprocessor, split, recipe: Recipe, training: bool):
        return encode_split_cached(preprocessor, split, recipe.data.max_length)

    def loss_functions(self, recipe: Recipe, data, device: torch.device) -> tuple[nn.Module, nn.Module]:
        weight = balanced_pos_weight(data.train.labels) if recipe.multilabel.pos_weight == "balanced" else None
        # Validation loss: plain BCE whatever the training loss, so that runs compare.
        return (MultiLabelLoss(weight.to(device) if weight is not None else None, recipe.multilabel.loss),
                MultiLabelLoss())

    def validation_metrics(self, model, encoded, label_names, batch_size, pad_id, device, loss_fn, autocast_dtype,
                           before_batch=None) -> dict[str, Any]:
        """At threshold 0.5: the thresholds are tuned once, after training, for the saved epoch."""

        probabilities, loss = predict_probabilities(model, encoded, batch_size, pad_id, device, loss_fn, autocast_dtype,
                                                    before_batch=before_batch, activation="sigmoid")
        metrics = multilabel_metrics(np.array(encoded.labels), probabilities, label_names,
                                     0.5, per_label=False)
        metrics["loss"] = loss
        return metrics

    def after_training(self, recipe: Recipe, data, result, run_dir: Path, log) -> dict[str, Any]:
        """Tune the thresholds on the validation split with the saved model, store them, evaluate test."""

        def probabilities_of(split) -> np.ndarray:
            encoded = encode_split(result.tokenizer, split, recipe.data.max_length)
            return predict_probabilities(result.model, encoded, 64, result.tokenizer.pad_token_id,
                                         result.runtime.device, activation="sigmoid")[0]

        mode = recipe.multilabel.thresholds
        gold_validation = np.array(data.validation.labels)
        choice = choose_thresholds(gold_validation, probabilities_of(data.validation), mode, data.label_names)
        thresholds = choice.thresholds
        save_thresholds(run_dir / "thresholds.json", data.label_names, thresholds, mode, "validation", choice.flagged)
        if choice.flagged:
            log(f"warning: {len(choice.flagged)} label(s) keep threshold 0.5: their best validation threshold is no "
                "better than predicting them always or never: " + ", ".join(
                    f"{f['label']} (support {f['support']})" for f in choice.flagged[:8])
                + (" ..." if len(choice.flagged) > 8 else "") + f" (see {run_dir / 'thresholds.json'})")
        log(f"thresholds ({mode}): " + ", ".join(f"{n} {t:.2f}" for n, t in list(zip(data.label_names, thresholds))[:8])
            + (" ..." if len(thresholds) > 8 else "") + f" -> {run_dir / 'thresholds.json'}")
        summary: dict[str, Any] = {}
        if data.test is not None:
            summary["test"] = write_multilabel_evaluation(run_dir / "eval" / "test", data.label_names,
                                                          np.array(data.test.labels), probabilities_of(data.test),
                                                          thresholds, data.test.texts, data.test.source_rows)
        return summary

    def label_counts(self, split, label_names: list[str]) -> dict[str, int]:
        counts = np.asarray(split.labels, dtype=np.int64).sum(axis=0)
        return {label: int(n) for label, n in zip(label_names, counts)}


    # --------------------------------------------------------------------------- predict and eval of a run

    def predict_command(self, run_dir: str, text: str | None, text_pair: str | None, input_file: str | None,
                        output_file: str | None, top: int) -> int:
        """``tuneforge predict`` of a multilabel run: the labels over their thresholds and every probability."""
        predictor = MultiLabelPredictor(run_dir)
        names = predictor.label_names
        if text is not None:
            if not text.strip():
                raise UserError("predict: --text is empty")
            probabilities = predictor.probabilities([text], [text_pair] if text_pair is not None else None)[0]
            chosen = [names[i] for i in np.flatnonzero(probabilities >= predictor.thresholds)]
            print(",".join(chosen) if chosen else "(no label)")
            for index in np.argsort(-probabilities)[:top]:
                print(f"  {names[index]:<30} {probabilities[index]:.4f}  (threshold {predictor.thresholds[index]:.2f})")
            return 0
        data = predictor.recipe.data
        frame = read_table(input_file)
        if data.text_column not in frame.columns:
            present = ", ".join(c for c in frame.columns if c != SOURCE_ROW)
            raise UserError(f"{input_file}: no column '{data.text_column}' (the run was trained on it); "
                            f"the file has: {present}")
        pairs = frame[data.text_pair_column].astype(str).tolist() if data.text_pair_column else None
        probabilities = predictor.probabilities(frame[data.text_column].astype(str).tolist(), pairs)
        decided = probabilities >= predictor.thresholds
        result = frame.copy()
        labels = [[names[i] for i in np.flatnonzero(row)] for row in decided]
        scores = [{name: round(float(p), 6) for name, p in zip(names, row)} for row in probabilities]
        tabular = Path(output_file).suffix.lower() in (".csv", ".tsv")
        # CSV/TSV cells hold text: the label list joined by commas, the probabilities as a JSON object.
        result["predicted_labels"] = [",".join(x) for x in labels] if tabular else labels
        result["probabilities"] = [json.dumps(x) for x in scores] if tabular else scores
        write_table(result, output_file)
        counts = pd.Series([label for row in labels for label in row]).value_counts()
        print(f"wrote {len(result)} predictions to {output_file} (thresholds from {predictor.thresholds_source}): "
              + ", ".join(f"{k} {v}" for k, v in counts.head(5).items()))
        return 0

    def eval_command(self, run_dir: str, data_file: str) -> int:
        """``tuneforge eval`` of a multilabel run on a labelled file, at the run's thresholds."""

        predictor = MultiLabelPredictor(run_dir)
        path = Path(data_file)
        folder = Path(run_dir) / "eval" / path.stem
        if folder.exists() and any(folder.iterdir()):
            raise UserError(f"{folder}: an evaluation of a file named '{path.stem}' already exists; it is never "
                            "overwritten: rename or remove that folder first")
        split, _, _ = read_multilabel_split(path, predictor.recipe.data, "eval", predictor.label_names)
        metrics = write_multilabel_evaluation(folder, predictor.label_names, np.array(split.labels),
                                              predictor.probabilities(split.texts, split.text_pairs),
                                              predictor.thresholds, split.texts, split.source_rows)
        print_multilabel_summary(path.stem, metrics)
        print(f"  wrote {folder}/metrics.json, predictions.csv, errors.csv")
        return 0


def print_multilabel_summary(split: str, metrics: dict[str, Any]) -> None:
    half = metrics.get("at_threshold_0.5", {})
    print(f"  {split:<10} f1_micro {metrics['f1_micro']:.4f}, f1_macro {metrics['f1_macro']:.4f}, subset_accuracy "
          f"{metrics['subset_accuracy']:.4f}, hamming_loss {metrics['hamming_loss']:.4f}, roc_auc "
          f"{metrics['roc_auc'] if metrics['roc_auc'] is None else round(metrics['roc_auc'], 4)} "
          f"(n={metrics['n_examples']}); at 0.5: f1_micro {half.get('f1_micro', float('nan')):.4f}, "
          f"f1_macro {half.get('f1_macro', float('nan')):.4f}")


class MultiLabelPredictor:
    """A multilabel run's model, tokenizer and thresholds; probabilities are per-label sigmoids."""

    def __init__(self, run_dir: str | Path, batch_size: int = 64) -> None:

        self._predictor = Predictor(run_dir, batch_size)
        self.recipe = self._predictor.recipe
        self.label_names = self._predictor.label_names
        self.thresholds = load_thresholds(Path(run_dir), self.label_names)
        stored = Path(run_dir) / "thresholds.json"
        self.thresholds_source = str(stored) if stored.is_file() else "the default 0.5"

    def probabilities(self, texts: list[str], text_pairs: list[str] | None = None) -> np.ndarray:

        inner = self._predictor
        encoded = inner.tokenizer(texts, text_pairs, truncation=True, max_length=self.recipe.data.max_length,
                                  padding=False, return_attention_mask=False)
        split = EncodedSplit(input_ids=encoded["input_ids"], token_type_ids=encoded.get("token_type_ids"),
                             labels=[0] * len(texts))
        return predict_probabilities(inner.model, split, inner.batch_size, inner.tokenizer.pad_token_id, inner.device,
                                     activation="sigmoid")[0]
