"""``task: classification``: one label per text (or text pair); softmax and cross-entropy."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tuneforge.base.atomic import write_json_atomic
from tuneforge.base.errors import UserError
from tuneforge.base.models import load_tokenizer, resolve_model
from tuneforge.base.quiet import quiet_transformers
from tuneforge.base.recipe import Recipe
from tuneforge.base.tables import SOURCE_ROW, read_table, write_table
from tuneforge.core.data.batching import encode_split
from tuneforge.core.data.encode_cache import encode_split_cached
from tuneforge.core.data.examples import load_classification_data
from tuneforge.core.data.splits import ClassificationData, read_split, to_split
from tuneforge.core.evaluate import classification_metrics, write_evaluation
from tuneforge.core.evaluate.calibration import (CALIBRATION_FILE, calibration_line, calibration_record,
                                                 calibration_summary, softmax_with_temperature)
from tuneforge.core.evaluate.inference import predict_probabilities
from tuneforge.core.evaluate.summary import print_summary
from tuneforge.core.tasks.base import Task
from tuneforge.core.tasks.predictor import Predictor


# Names under which transformers configs keep their dropout probabilities.
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout",
                "attention_dropout", "seq_classif_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop",
                "attn_pdrop", "summary_first_dropout")


def load_classifier(recipe: Recipe, label_names: list[str]):
    """Tokenizer and a sequence-classification model with a fresh head for ``label_names``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    source = resolve_model(recipe.model)
    config = AutoConfig.from_pretrained(
        source, num_labels=len(label_names),
        id2label=dict(enumerate(label_names)), label2id={name: i for i, name in enumerate(label_names)})
    if recipe.train.dropout is not None:
        for key in DROPOUT_KEYS:
            if isinstance(getattr(config, key, None), float) or (key == "classifier_dropout" and hasattr(config, key)):
                setattr(config, key, recipe.train.dropout)
    tokenizer = load_tokenizer(source)
    config.pad_token_id = tokenizer.pad_token_id
    with quiet_transformers():  # "newly initialized classifier" is expected: we train that head
        model = AutoModelForSequenceClassification.from_pretrained(source, config=config)
    return tokenizer, model


def class_weight_tensor(recipe: Recipe, data: ClassificationData) -> torch.Tensor | None:
    """Per-class loss weights: none, balanced (n / (k * count)), or given by label name (default 1)."""
    setting = recipe.train.class_weights
    if setting == "none":
        return None
    if setting == "balanced":
        counts = np.bincount(data.train.labels, minlength=len(data.label_names)).astype(np.float64)
        return torch.tensor(len(data.train) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
    return torch.tensor([float(setting.get(name, 1.0)) for name in data.label_names], dtype=torch.float32)


def calibrate_and_evaluate(recipe: Recipe, data, run_dir: Path, log,
                           logits_of: Callable[[Any], np.ndarray]) -> dict[str, Any]:
    """After training a single-label classifier: with ``train.calibrate``, fit the temperature on the validation
    logits and write ``calibration.json``; evaluate the test split (softmax of ``logits / T``) into ``eval/test``
    with its ECE before and after. ``logits_of(split)``: the saved model's logits of a split, in row order."""
    summary: dict[str, Any] = {}
    test_logits = logits_of(data.test) if data.test is not None else None
    temperature, extra = 1.0, {}
    if recipe.train.calibrate:
        validation = data.validation if data.validation is not None and len(data.validation) else None
        record = calibration_record(
            logits_of(validation) if validation is not None else np.zeros((0, len(data.label_names))),
            np.array(validation.labels if validation is not None else [], dtype=np.int64), test_logits,
            np.array(data.test.labels) if data.test is not None else None)
        write_json_atomic(run_dir / CALIBRATION_FILE, record)
        log(f"{calibration_line(record)} -> {run_dir / CALIBRATION_FILE}")
        summary["calibration"] = calibration_summary(record)
        if record["fitted"]:
            temperature = record["temperature"]
            if "test" in record:
                extra = {"ece_before_calibration": record["test"]["ece_before"], "temperature": temperature}
    if data.test is not None:
        summary["test"] = write_evaluation(run_dir / "eval" / "test", data.label_names, np.array(data.test.labels),
                                           softmax_with_temperature(test_logits, temperature), data.test.texts,
                                           data.test.text_pairs, data.test.source_rows, extra_metrics=extra)
    return summary


class ClassificationTask(Task):
    """``task: classification``: one label per text (or text pair)."""

    name = "classification"
    export_formats = ("onnx", "torchscript", "safetensors")
    inference_backends = ("torch", "onnx")
    supports_search = True
    supports_continual = True

    def load_data(self, recipe: Recipe):
        return load_classification_data(recipe.data, recipe.train.seed, model=recipe.model)

    def load_model(self, recipe: Recipe, label_names: list[str]):
        return load_classifier(recipe, label_names)

    def encode(self, preprocessor, split, recipe: Recipe, training: bool):
        return encode_split_cached(preprocessor, split, recipe.data.max_length)

    def loss_functions(self, recipe: Recipe, data, device: torch.device) -> tuple[nn.Module, nn.Module]:
        weights = class_weight_tensor(recipe, data)
        # CrossEntropyLoss also takes class-probability targets (the mixed labels of MixUp/CutMix).
        return nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None), nn.CrossEntropyLoss()

    def validation_metrics(self, model, encoded, label_names, batch_size, pad_id, device, loss_fn, autocast_dtype,
                           before_batch=None) -> dict[str, Any]:

        probabilities, loss = predict_probabilities(model, encoded, batch_size, pad_id, device, loss_fn,
                                                    autocast_dtype, before_batch=before_batch)
        metrics = classification_metrics(np.array(encoded.labels), probabilities, label_names, per_class=False)
        metrics["loss"] = loss
        return metrics

    def encode_for_inference(self, recipe: Recipe, preprocessor, split):
        """A split as the saved model reads it after training (no augmentation)."""
        return encode_split(preprocessor, split, recipe.data.max_length)

    def after_training(self, recipe: Recipe, data, result, run_dir: Path, log) -> dict[str, Any]:
        """``train.calibrate``: fit the temperature on validation (``calibration.json``); then evaluate the test
        split into ``eval/test`` with the calibrated confidences. Returns ``test`` and ``calibration`` (the
        temperature and the ECE/NLL before and after, for ``run.json``)."""

        def logits_of(split) -> np.ndarray:
            encoded = self.encode_for_inference(recipe, result.tokenizer, split)
            return predict_probabilities(result.model, encoded, 64, result.tokenizer.pad_token_id,
                                         result.runtime.device, activation="logits")[0]

        return calibrate_and_evaluate(recipe, data, run_dir, log, logits_of)

    # --------------------------------------------------------------------------- predict and eval of a run

    def eval_command(self, run_dir: str, data_file: str, backend: str = "torch") -> int:
        """``tuneforge eval RUN FILE``: metrics, predictions, errors and the confusion matrix of a labelled file
        (``backend="onnx"``: computed by the run's ONNX export)."""
        predictor = Predictor(run_dir, backend=backend)
        path = Path(data_file)
        frame, notes = read_split(path, predictor.recipe.data, "eval")
        split = to_split(frame, path, predictor.recipe.data, path.stem, {n: i for i, n in enumerate(predictor.label_names)})
        folder = Path(run_dir) / "eval" / path.stem
        if folder.exists() and any(folder.iterdir()):
            raise UserError(f"{folder}: an evaluation of a file named '{path.stem}' already exists; it is never "
                            "overwritten: rename or remove that folder first")
        probabilities = predictor.probabilities(split.texts, split.text_pairs)
        metrics = write_evaluation(folder, predictor.label_names, np.array(split.labels), probabilities, split.texts,
                                   split.text_pairs, split.source_rows)
        for note in notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
        print_summary(folder, {path.stem: metrics}, 0.0)
        print(f"  wrote {folder}/metrics.json, predictions.csv, errors.csv, confusion_matrix.png")
        return 0

    def predict_command(self, run_dir: str, text: str | None, text_pair: str | None, input_file: str | None,
                        output_file: str | None, top: int, backend: str = "torch") -> int:
        """``tuneforge predict RUN``: the top labels of one text, or a predicted label and confidence per row
        (``backend="onnx"``: computed by the run's ONNX export)."""
        predictor = Predictor(run_dir, backend=backend)
        names = predictor.label_names
        if text is not None:
            if not text.strip():
                raise UserError("predict: --text is empty")
            if predictor.is_pair_task and text_pair is None:
                raise UserError("predict: this run classifies sentence pairs; add --text-pair \"...\"")
            probabilities = predictor.probabilities([text], [text_pair] if text_pair is not None else None)[0]
            order = np.argsort(-probabilities)
            print(f"{names[order[0]]}\t{probabilities[order[0]]:.4f}")
            for index in order[:top]:
                print(f"  {names[index]:<30} {probabilities[index]:.4f}")
            return 0

        data = predictor.recipe.data
        frame = read_table(input_file)
        columns = [data.text_column] + ([data.text_pair_column] if data.text_pair_column else [])
        for column in columns:
            if column not in frame.columns:
                present = ", ".join(c for c in frame.columns if c != SOURCE_ROW)
                raise UserError(f"{input_file}: no column '{column}' (the run was trained on it); the file has: {present}")
            blank = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
            if blank.any():
                rows = frame.loc[blank, SOURCE_ROW].tolist()[:10]
                raise UserError(f"{input_file}: empty text in column '{column}' at rows {', '.join(map(str, rows))}; "
                                "fix or remove them")
        pairs = frame[data.text_pair_column].astype(str).tolist() if data.text_pair_column else None
        probabilities = predictor.probabilities(frame[data.text_column].astype(str).tolist(), pairs)
        result = frame.copy()
        result["predicted_label"] = [names[i] for i in probabilities.argmax(axis=1)]
        result["confidence"] = np.round(probabilities.max(axis=1), 6)
        write_table(result, output_file)
        counts = pd.Series(result["predicted_label"]).value_counts()
        print(f"wrote {len(result)} predictions to {output_file}: " + ", ".join(f"{k} {v}" for k, v in counts.head(5).items()))
        return 0
