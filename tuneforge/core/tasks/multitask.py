"""``task: multitask``: one shared encoder, one head per task (single-label or multi-label), trained on batches
that each come from one task, with loss ``weight_t * loss_t`` for a batch of task t (the weighted sum of the
per-task losses over an epoch, as in MT-DNN).

What it plugs into the loop (:mod:`tuneforge.core.engine.loop`), like the other tasks: the data (every task's splits,
:mod:`tuneforge.core.data.multitask`), the model (:mod:`tuneforge.core.tasks.multitask_model`), the batch schedule across
tasks (``multitask.sampling``), the loss, and validation per task every epoch (``validation_<task>/<metric>`` in
``metrics.jsonl``, plus the mean over tasks under the plain metric names, and ``mean_metric``: the mean of each
task's own ``metric``). Methods: ``full``, ``freeze``, ``lora`` (merged); the others are refused at validation.
Multi-label heads decide at probability 0.5.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tuneforge.base.recipe import Recipe
from tuneforge.core.data.multitask import (MultiTaskEncoded, MultiTaskSplit, epoch_batches, load_multitask_data,
                                      task_batch_counts, task_data_config)
from tuneforge.base.errors import UserError
from tuneforge.core.tasks.base import Task
from tuneforge.core.tasks.multitask_model import HeadSpec, MultiTaskModel, load_multitask_model
from tuneforge.core.tasks.multilabel import MultiLabelLoss, prior_log_odds
from tuneforge.core.evaluate import classification_metrics, write_evaluation
from tuneforge.core.evaluate.multilabel import multilabel_metrics, write_multilabel_evaluation
from tuneforge.base.models import load_tokenizer, resolve_model
from tuneforge.base.quiet import quiet_transformers
from tuneforge.core.tasks.classification import DROPOUT_KEYS
from tuneforge.core.data.encode_cache import encode_split_cached
from tuneforge.base.tables import SOURCE_ROW, read_table, write_table
from tuneforge.base.recipe import DataConfig
from tuneforge.core.data.splits import read_split, to_split
from tuneforge.core.data.multilabel import read_multilabel_split
from tuneforge.core.evaluate.inference import predict_probabilities
from tuneforge.core.methods import method_spec
from tuneforge.core.recipe import load_run_recipe
from tuneforge.base.runfolder import refuse_pickle_weights
from tuneforge.core.data.batching import EncodedSplit, iterate_batches, sorted_batches

MULTITASK_METHODS = ("full", "freeze", "lora")
MULTI_LABEL_THRESHOLD = 0.5
# Metrics averaged over the tasks under their plain names (the loop logs accuracy and f1_macro; early stopping
# and `tuneforge runs` read these).
MEAN_METRICS = ("loss", "accuracy", "f1_macro", "roc_auc")


def head_specs(recipe: Recipe, qualified_labels: list[str]) -> list[HeadSpec]:
    """The heads of the recipe's tasks; ``qualified_labels`` (``task:label``, the run's labels.json) give their labels."""
    heads = []
    for spec in recipe.tasks or []:
        config = task_data_config(recipe, spec)
        labels = [name.split(":", 1)[1] for name in qualified_labels if name.split(":", 1)[0] == spec.name]
        heads.append(HeadSpec(name=spec.name, type=spec.type, labels=labels, text_column=config.text_column,
                              text_pair_column=config.text_pair_column, label_column=config.label_column,
                              label_delimiter=config.label_delimiter, weight=spec.weight, metric=spec.metric))
    return heads


class MultiTaskLoss(nn.Module):
    """``weight_t * loss_t`` of a one-task batch: cross-entropy (single-label) or BCE on logits (multi-label);
    ``weighted=False``: ``loss_t`` (validation).

    ``labels`` as :func:`tuneforge.core.data.multitask.collate_multitask` makes them: column 0 the task, then its labels."""

    def __init__(self, heads: list[HeadSpec], weighted: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.weights = [head.weight if weighted else 1.0 for head in heads]

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tasks = torch.unique(labels[:, 0])
        if len(tasks) != 1:
            raise ValueError("a multitask training batch must hold one task")
        task = int(tasks[0])
        head = self.heads[task]
        target = labels[:, 1:1 + head.label_width]
        if head.type == "single_label":
            loss = nn.functional.cross_entropy(logits, target[:, 0])
        else:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
        return self.weights[task] * loss


def plain_loss(head: HeadSpec) -> nn.Module:
    """One head's unweighted validation loss (labels as its task view gives them: class ids or multi-hot rows)."""
    return nn.CrossEntropyLoss() if head.type == "single_label" else MultiLabelLoss()


def head_metrics(head: HeadSpec, gold: np.ndarray, probabilities: np.ndarray, per_class: bool = False) -> dict[str, Any]:

    if head.type == "single_label":
        return classification_metrics(gold, probabilities, head.labels, per_class=per_class)
    return multilabel_metrics(gold, probabilities, head.labels, MULTI_LABEL_THRESHOLD, per_label=per_class)


def combine_task_metrics(per_task: dict[str, dict[str, Any]], heads: list[HeadSpec]) -> dict[str, Any]:
    """One metrics dict: ``<task>/<metric>`` for every task's numbers, the mean over tasks under the plain names
    (``loss``: weighted by the tasks' loss weights, as training weighs it), and ``mean_metric``."""
    combined: dict[str, Any] = {}
    for name, metrics in per_task.items():
        combined.update({f"{name}/{key}": value for key, value in metrics.items()
                         if isinstance(value, (int, float)) or value is None})
    for key in MEAN_METRICS:
        values = [metrics.get(key) for metrics in per_task.values()]
        if values and all(isinstance(v, (int, float)) for v in values):
            if key == "loss":
                weights = {head.name: head.weight for head in heads if head.name in per_task}
                combined[key] = sum(weights[n] * m[key] for n, m in per_task.items()) / sum(weights.values())
            else:
                combined[key] = float(np.mean(values))
    combined["mean_metric"] = float(np.mean([per_task[head.name][head.metric] for head in heads
                                             if head.name in per_task]))
    combined["n_examples"] = int(sum(metrics.get("n_examples", 0) for metrics in per_task.values()))
    return combined


class MultiTaskTask(Task):
    name = "multitask"

    def read_plain_model(self, folder: Path) -> nn.Module:
        """A multitask model folder: the shared encoder, ``heads.safetensors`` and ``multitask.json``."""
        return load_multitask_model(folder)

    def load_data(self, recipe: Recipe):
        return load_multitask_data(recipe)

    def check_model_config(self, recipe: Recipe, model_config: Any) -> None:
        if recipe.method.name not in MULTITASK_METHODS:
            raise UserError(f"method.name {recipe.method.name}: not supported yet for task multitask; use one of "
                            f"{', '.join(MULTITASK_METHODS)}")
        if recipe.method.name == "lora" and not getattr(recipe.method, "merge", True):
            raise UserError("method.merge false: not supported yet for task multitask (the encoder is saved merged); "
                            "remove it")
        if recipe.distill is not None:
            raise UserError("distill: not supported yet for task multitask; remove the distill section")
        if not hasattr(model_config, "hidden_size"):
            raise UserError(f"model {recipe.model} ({model_config.model_type}): its config has no hidden_size, so "
                            "the heads' input size is unknown; task multitask needs a text encoder")

    def load_model(self, recipe: Recipe, label_names: list[str]):
        from transformers import AutoConfig, AutoModel


        source = resolve_model(recipe.model)
        config = AutoConfig.from_pretrained(source)
        if recipe.train.dropout is not None:
            for key in DROPOUT_KEYS:
                if isinstance(getattr(config, key, None), float):
                    setattr(config, key, recipe.train.dropout)
        tokenizer = load_tokenizer(source)
        with quiet_transformers():  # the body is loaded without its pretraining heads: expected
            encoder = AutoModel.from_pretrained(source, config=config)
        dropout = recipe.train.dropout if recipe.train.dropout is not None else float(
            getattr(config, "hidden_dropout_prob", 0.1) or 0.1)
        model = MultiTaskModel(encoder, head_specs(recipe, label_names), recipe.multitask.pooling,
                               recipe.data.max_length, dropout)
        return tokenizer, model

    def encode(self, preprocessor, split: MultiTaskSplit, recipe: Recipe, training: bool) -> MultiTaskEncoded:
        # Label columns per example: 1 (a class id), or the multi-hot row's length (the task's label count).
        widths = [len(part.labels[0]) if spec.type == "multi_label" and part else 1
                  for spec, part in zip(recipe.tasks, split.parts)]
        parts = [encode_split_cached(preprocessor, part, recipe.data.max_length) if part is not None else None
                 for part in split.parts]
        return MultiTaskEncoded(parts, widths, preprocessor.pad_token_id)

    def training_batches(self, recipe: Recipe, encoded: MultiTaskEncoded, batch_size: int, generator) -> list[list[int]]:
        settings = recipe.multitask
        return epoch_batches(encoded, batch_size, generator, recipe.train.group_by_length, settings.sampling,
                             settings.temperature)

    def batches_per_epoch(self, recipe: Recipe, encoded: MultiTaskEncoded, batch_size: int) -> int:
        return sum(task_batch_counts([len(part) for part in encoded.parts], batch_size))

    def before_training(self, recipe: Recipe, data, model, tokenizer, device, autocast_dtype, run_dir: Path,
                        log) -> dict[str, Any]:
        """Each multi-label head's bias starts at its labels' log prior odds in train, as a ``task: multilabel``
        model's does by default (why: :meth:`MultiLabelTask.before_training`)."""
        for index, (head, part) in enumerate(zip(head_specs(recipe, data.label_names), data.train.parts)):
            if head.type == "multi_label" and part is not None:
                bias = model.heads[str(index)].classifier.bias
                with torch.no_grad():
                    bias.copy_(torch.as_tensor(prior_log_odds(part.labels), dtype=bias.dtype))
        return {}

    def no_learning_baseline(self, recipe: Recipe, data, facts: dict[str, Any]) -> dict[str, Any]:
        """Every task's training-label priors predicted for each of its validation rows (its own metrics), then
        the means over tasks, as :meth:`validation_metrics` combines them."""
        heads = head_specs(recipe, data.label_names)
        per_task = {}
        for head, train_part, validation_part in zip(heads, data.train.parts, data.validation.parts):
            if train_part is None or validation_part is None:
                continue
            gold = np.asarray(validation_part.labels, dtype=np.int64)
            train_labels = np.asarray(train_part.labels, dtype=np.int64)
            prior = (train_labels.mean(axis=0) if head.type == "multi_label" else
                     np.bincount(train_labels, minlength=len(head.labels)) / max(len(train_labels), 1))
            per_task[head.name] = head_metrics(head, gold, np.tile(prior, (len(gold), 1)))
        return combine_task_metrics(per_task, heads) if per_task else {}

    def loss_functions(self, recipe: Recipe, data, device: torch.device) -> tuple[nn.Module, nn.Module]:
        heads = head_specs(recipe, data.label_names)
        return MultiTaskLoss(heads), MultiTaskLoss(heads, weighted=False)

    def validation_metrics(self, model, encoded: MultiTaskEncoded, label_names, batch_size, pad_id, device, loss_fn,
                           autocast_dtype, before_batch=None) -> dict[str, Any]:
        """Every task on its own validation rows (its own head, loss and metrics); then the means over tasks."""
        heads = loss_fn.heads  # the validation loss of loss_functions() knows the heads
        per_task = {}
        for task, head in enumerate(heads):
            view = encoded.task_view(task)
            select = (lambda local, view=view: before_batch(view.global_indices(local))) if before_batch else None
            probabilities, loss = _probabilities(model, view, head, batch_size, pad_id, device, autocast_dtype, select)
            per_task[head.name] = {**head_metrics(head, np.array(view.labels), probabilities), "loss": loss}
        return combine_task_metrics(per_task, heads)

    def after_training(self, recipe: Recipe, data, result, run_dir: Path, log) -> dict[str, Any]:
        """Evaluate every task that has a test split into ``eval/test/<task>/``."""

        if data.test is None:
            return {}
        heads = head_specs(recipe, data.label_names)
        encoded = self.encode(result.tokenizer, data.test, recipe, training=False)
        per_task = {}
        for task, (head, split) in enumerate(zip(heads, data.test.parts)):
            if split is None:
                continue
            probabilities, _ = _probabilities(result.model, encoded.task_view(task), head, 64,
                                              result.tokenizer.pad_token_id, result.runtime.device, None, None)
            folder = run_dir / "eval" / "test" / head.name
            gold = np.array(split.labels)
            if head.type == "single_label":
                per_task[head.name] = write_evaluation(folder, head.labels, gold, probabilities, split.texts,
                                                       split.text_pairs, split.source_rows)
            else:
                per_task[head.name] = write_multilabel_evaluation(
                    folder, head.labels, gold, probabilities, np.full(len(head.labels), MULTI_LABEL_THRESHOLD),
                    split.texts, split.source_rows)
            log(f"test {head.name}: " + ", ".join(f"{k} {per_task[head.name][k]:.4f}" for k in
                                                  ("accuracy", "f1_macro") if per_task[head.name].get(k) is not None))
        return {"test": combine_task_metrics(per_task, heads)}

    def label_counts(self, split: MultiTaskSplit, label_names: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        grouped: dict[str, list[str]] = {}
        for name in label_names:
            task, label = name.split(":", 1)
            grouped.setdefault(task, []).append(label)
        for part, (task, labels) in zip(split.parts, grouped.items()):
            if part is None:
                continue
            values = np.asarray(part.labels, dtype=np.int64)
            per_label = values.sum(axis=0) if values.ndim == 2 else np.bincount(values, minlength=len(labels))
            counts.update({f"{task}:{label}": int(n) for label, n in zip(labels, per_label)})
        return counts

    # --------------------------------------------------------------------------- predict and eval of a run

    def predict_command(self, run_dir: str, text: str | None, text_pair: str | None, input_file: str | None,
                        output_file: str | None, top: int) -> int:
        """Every task's label per row: ``<task>_label`` and ``<task>_probabilities`` (+ ``<task>_confidence`` for
        single-label heads; multi-label heads give the list of labels at probability >= 0.5)."""
        predictor = MultiTaskPredictor(run_dir)
        if text is not None:
            if not text.strip():
                raise UserError("predict: --text is empty")
            if predictor.pair_columns() and text_pair is None:
                raise UserError("predict: a task of this run classifies sentence pairs; add --text-pair \"...\"")
            rows = {column: [text] for column in predictor.text_columns()}
            rows.update({column: [text_pair] for column in predictor.pair_columns()})
            for head, probabilities in zip(predictor.heads, predictor.probabilities(rows).values()):
                print(f"{head.name}\t{format_label(head, probabilities[0])}")
                for index in np.argsort(-probabilities[0])[:top]:
                    print(f"  {head.labels[index]:<30} {probabilities[0][index]:.4f}")
            return 0
        frame = read_table(input_file)
        for column in predictor.text_columns() + predictor.pair_columns():
            if column not in frame.columns:
                present = ", ".join(c for c in frame.columns if c != SOURCE_ROW)
                raise UserError(f"{input_file}: no column '{column}' (the run's tasks read it); the file has: {present}")
            blank = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
            if blank.any():
                rows = ", ".join(map(str, frame.loc[blank, SOURCE_ROW].tolist()[:10]))
                raise UserError(f"{input_file}: empty text in column '{column}' at rows {rows}; fix or remove them")
        columns = {column: frame[column].astype(str).tolist()
                   for column in predictor.text_columns() + predictor.pair_columns()}
        result = frame.drop(columns=[SOURCE_ROW], errors="ignore").copy()
        tabular = Path(output_file).suffix.lower() in (".csv", ".tsv")
        summary = []
        for head, probabilities in zip(predictor.heads, predictor.probabilities(columns).values()):
            labels = [format_label(head, row, as_list=not tabular) for row in probabilities]
            scores = [{name: round(float(p), 6) for name, p in zip(head.labels, row)} for row in probabilities]
            result[f"{head.name}_label"] = labels
            if head.type == "single_label":
                result[f"{head.name}_confidence"] = np.round(probabilities.max(axis=1), 6)
            result[f"{head.name}_probabilities"] = [json.dumps(s) for s in scores] if tabular else scores
            counts = {}
            for label in labels:
                counts[str(label)] = counts.get(str(label), 0) + 1
            summary.append(f"{head.name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(),
                                                                                     key=lambda kv: -kv[1])[:4]))
        write_table(result, output_file)
        print(f"wrote {len(result)} predictions to {output_file} ({len(predictor.heads)} tasks); " + "; ".join(summary))
        return 0

    def eval_command(self, run_dir: str, data_file: str) -> int:
        """Evaluate every task whose label column is in the file into ``eval/<file stem>/<task>/``."""

        predictor = MultiTaskPredictor(run_dir)
        path = Path(data_file)
        folder = Path(run_dir) / "eval" / path.stem
        if folder.exists() and any(folder.iterdir()):
            raise UserError(f"{folder}: an evaluation of a file named '{path.stem}' already exists; it is never "
                            "overwritten: rename or remove that folder first")
        present = [c for c in read_table(path).columns if c != SOURCE_ROW]
        heads = [head for head in predictor.heads if head.label_column in present]
        if not heads:
            raise UserError(f"{path}: none of the tasks' label columns "
                            f"({', '.join(sorted({h.label_column for h in predictor.heads}))}) is in the file; it has: "
                            f"{', '.join(present)}")
        for head in heads:
            split = read_head_split(path, head)
            columns = {head.text_column: split.texts}
            if head.text_pair_column:
                columns[head.text_pair_column] = split.text_pairs
            probabilities = predictor.probabilities(columns, only=[head.name])[head.name]
            gold = np.array(split.labels)
            if head.type == "single_label":
                metrics = write_evaluation(folder / head.name, head.labels, gold, probabilities, split.texts,
                                           split.text_pairs, split.source_rows)
            else:
                metrics = write_multilabel_evaluation(folder / head.name, head.labels, gold, probabilities,
                                                      np.full(len(head.labels), MULTI_LABEL_THRESHOLD), split.texts,
                                                      split.source_rows)
            values = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("accuracy", "f1_macro", "f1_micro")
                               if metrics.get(k) is not None)
            print(f"  {head.name:<12} {values} (n={metrics.get('n_examples', len(gold))})")
        skipped = [head.name for head in predictor.heads if head not in heads]
        if skipped:
            print(f"  not evaluated (no label column in {path.name}): {', '.join(skipped)}")
        print(f"  wrote {folder}/<task>/metrics.json, predictions.csv, errors.csv")
        return 0


def format_label(head: HeadSpec, probabilities: np.ndarray, as_list: bool = False):
    """A single-label head's label, or a multi-label head's labels at probability >= 0.5 (list or comma-joined)."""
    if head.type == "single_label":
        return head.labels[int(np.argmax(probabilities))]
    chosen = [head.labels[i] for i in np.flatnonzero(probabilities >= MULTI_LABEL_THRESHOLD)]
    return chosen if as_list else ",".join(chosen)


def read_head_split(path: Path, head: HeadSpec):
    """A labelled file as one head's split (its columns, its label names)."""

    config = DataConfig(train=path, text_column=head.text_column, text_pair_column=head.text_pair_column,
                        label_column=head.label_column, label_delimiter=head.label_delimiter)
    if head.type == "multi_label":
        return read_multilabel_split(path, config, "eval", head.labels)[0]
    frame, _ = read_split(path, config, "eval")
    return to_split(frame, path, config, path.stem, {name: i for i, name in enumerate(head.labels)})


def _probabilities(model, view, head: HeadSpec, batch_size: int, pad_id: int, device, autocast_dtype, before_batch):
    if len(view) == 0:
        return np.zeros((0, len(head.labels)), dtype=np.float32), None
    return predict_probabilities(model, view, batch_size, pad_id, device, plain_loss(head), autocast_dtype,
                                 before_batch=before_batch,
                                 activation="softmax" if head.type == "single_label" else "sigmoid")


class MultiTaskPredictor:
    """A multitask run's model (all heads) and tokenizer, loaded from ``RUN/model`` alone."""

    def __init__(self, run_dir: str | Path, batch_size: int = 64) -> None:
        from transformers import AutoTokenizer


        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: run folder not found")
        recipe = load_run_recipe(run_dir)
        model_dir = run_dir / "model"
        if not (model_dir / "config.json").is_file():
            raise UserError(f"{run_dir}: has no trained model (model/ is missing; did the run finish? see run.json)")
        refuse_pickle_weights(model_dir, allow_pickle=os.environ.get("TUNEFORGE_ALLOW_PICKLE") == "1")
        self.model: MultiTaskModel = method_spec(recipe.method.name).load(run_dir, recipe.method,
                                                                          load_multitask_model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.heads = self.model.head_specs
        self.batch_size = batch_size

    def text_columns(self) -> list[str]:
        return sorted({head.text_column for head in self.heads})

    def pair_columns(self) -> list[str]:
        return sorted({head.text_pair_column for head in self.heads if head.text_pair_column})

    @torch.no_grad()
    def probabilities(self, columns: dict[str, list[str]], only: list[str] | None = None) -> dict[str, np.ndarray]:
        """Each head's probabilities (softmax, or sigmoid for multi-label heads) for the rows of ``columns``
        (column name -> texts); heads reading the same columns share one encoder pass."""
        wanted = [head for head in self.heads if only is None or head.name in only]
        result: dict[str, np.ndarray] = {}
        groups: dict[tuple[str, str | None], list[HeadSpec]] = {}
        for head in wanted:
            groups.setdefault((head.text_column, head.text_pair_column), []).append(head)
        for (text_column, pair_column), heads in groups.items():
            texts, pairs = columns[text_column], columns[pair_column] if pair_column else None
            encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.model.max_length, padding=False,
                                     return_attention_mask=False)
            split = EncodedSplit(encoded["input_ids"], encoded.get("token_type_ids"), [0] * len(texts))
            outputs = {head.name: np.zeros((len(texts), len(head.labels)), dtype=np.float32) for head in heads}
            batches = sorted_batches(split.lengths, self.batch_size)
            for indices, batch in zip(batches, iterate_batches(split, batches, self.tokenizer.pad_token_id)):
                batch.pop("labels")
                logits = self.model.all_logits(**batch)
                for head in heads:
                    scores = logits[head.name].float()
                    scores = torch.softmax(scores, -1) if head.type == "single_label" else torch.sigmoid(scores)
                    outputs[head.name][indices] = scores.numpy()
            result.update(outputs)
        return {head.name: result[head.name] for head in wanted}
