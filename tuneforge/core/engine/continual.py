"""Continual fine-tuning (recipe key ``continual``, ``tuneforge train RECIPE --from RUN_DIR``): a new run starts
from a finished run's trained model instead of the pretrained one, and measures what it forgot.

- **Start**: the previous run's model (its merged model, or base + LoRA-family adapter merged on load) through
  the run-loading functions every command uses (so its files are checked against ``artifacts.json``). The label
  set is the old run's labels, in their order, followed by the new data's labels the old run lacked; the
  classifier's output layer grows by those rows and keeps the old rows as they were, so at step 0 the model
  answers the old labels exactly as the old run did. A different model or task is refused.
- **Keeping the old task** (``continual.strategy``): ``replay`` appends a stratified sample of the old training
  rows to the train split and draws ``continual.replay`` of every batch from it
  (:mod:`tuneforge.core.data.replay`); ``ewc`` adds the elastic-weight-consolidation penalty
  (:mod:`tuneforge.core.engine.ewc`) with the Fisher information of that sample; ``none`` trains on the new data
  alone (the naive baseline that forgetting is measured against).
- **Forgetting, measured**: when the old run had a test file, the new model is evaluated on it into
  ``eval/previous-test/`` and ``forgetting.json`` records the old test metrics before (from the old run) and after,
  the new test metrics, and the drop.

The old training rows are found through the old run's ``manifest.json`` and must have the sha256 recorded there
(or ``continual.previous_data: FILE`` names them).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from tuneforge.base.atomic import write_json_atomic
from tuneforge.base.errors import UserError
from tuneforge.base.manifest import MANIFEST_NAME, sha256_file
from tuneforge.base.models import load_tokenizer
from tuneforge.base.recipe import Recipe
from tuneforge.core.anatomy import describe
from tuneforge.core.data.batching import encode_split, iterate_batches
from tuneforge.core.data.examples import load_classification_data
from tuneforge.core.data.replay import replay_batch_count, replay_batches, stratified_sample
from tuneforge.core.data.splits import ClassificationData, Split, read_split, to_split
from tuneforge.core.engine.ewc import ElasticWeightConsolidation
from tuneforge.core.engine.hooks import LoopHooks
from tuneforge.core.evaluate import write_evaluation
from tuneforge.core.evaluate.inference import predict_probabilities
from tuneforge.core.methods import Method
from tuneforge.core.recipe import load_run_recipe
from tuneforge.core.tasks import Task, task_for

FORGETTING_NAME = "forgetting.json"
PREVIOUS_TEST_DIR = "previous-test"


@dataclass(frozen=True)
class PreviousRun:
    """A finished run that a continual run starts from."""

    folder: Path
    recipe: Recipe
    label_names: list[str]
    status: dict[str, Any]
    manifest: dict[str, Any]


def read_previous_run(folder: Path, recipe: Recipe) -> PreviousRun:
    """The finished run at ``folder``, checked against ``recipe``: same model, same task, a task that supports
    continual fine-tuning, finished. Raises UserError with one line otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--from {folder}: run folder not found; pass a folder `tuneforge train` wrote")
    previous = load_run_recipe(folder)  # config.yaml, and the model files checked against artifacts.json
    if previous.task != recipe.task:
        raise UserError(f"--from {folder}: that run's task is {previous.task}, this recipe's is {recipe.task}; "
                        "continue a run of the same task")
    if previous.model != recipe.model:
        raise UserError(f"--from {folder}: that run fine-tuned model '{previous.model}', this recipe names "
                        f"'{recipe.model}'; set model: {previous.model} to continue it")
    if not task_for(recipe.task).supports_continual:
        raise UserError(f"--from: continual fine-tuning is not supported yet for task {recipe.task}")
    if (previous.data.text_pair_column is None) != (recipe.data.text_pair_column is None):
        raise UserError(f"--from {folder}: that run read {'sentence pairs' if previous.data.text_pair_column else 'single texts'}; "
                        "this recipe must read the same (data.text_pair_column)")
    status = read_json(folder / "run.json") or {}
    if status.get("status") != "completed":
        raise UserError(f"--from {folder}: that run has status {status.get('status', 'unknown')!r} (run.json); "
                        "continue from a completed run")
    labels = read_json(folder / "labels.json")
    if not isinstance(labels, list) or not labels:
        raise UserError(f"--from {folder}: labels.json is missing or empty; was it written by `tuneforge train`?")
    return PreviousRun(folder=folder.resolve(), recipe=previous, label_names=[str(x) for x in labels], status=status,
                       manifest=read_json(folder / MANIFEST_NAME) or {})


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def combined_labels(old: list[str], new: list[str]) -> list[str]:
    """The old labels in their order, then the new labels the old run did not have (in the new data's order)."""
    known = set(old)
    return list(old) + [name for name in new if name not in known]


def relabel(split: Split, names: list[str], combined: list[str]) -> Split:
    """``split`` with label ids into ``names`` renumbered into ``combined``."""
    index = {name: i for i, name in enumerate(combined)}
    return replace(split, labels=[index[names[label]] for label in split.labels])


def concatenate(first: Split, second: Split, name: str) -> Split:
    """The rows of ``first`` followed by those of ``second`` (one split)."""
    pairs = None if first.text_pairs is None else first.text_pairs + (second.text_pairs or [])
    return Split(name=name, source=first.source, texts=first.texts + second.texts,
                 labels=first.labels + second.labels, source_rows=first.source_rows + second.source_rows,
                 text_pairs=pairs, notes=list(first.notes))


def checked_file(previous: PreviousRun, split: str, override: Path | None) -> Path | None:
    """The old run's ``split`` data file: ``override`` when given, else the path in its manifest, which must
    still have the sha256 recorded there."""
    if override is not None:
        if not Path(override).is_file():
            raise UserError(f"continual.previous_data: {override} not found")
        return Path(override)
    entry = (previous.manifest.get("data") or {}).get(split)
    if not entry:
        return None
    path = Path(entry["path"])
    if not path.is_file():
        raise UserError(f"--from {previous.folder}: its {split} file {path} (manifest.json) is gone; give the old "
                        f"training rows as continual.previous_data: FILE")
    recorded = entry.get("sha256")
    if recorded and sha256_file(path) != recorded:
        raise UserError(f"--from {previous.folder}: {path} changed since that run (sha256 differs from its "
                        "manifest.json); restore the file, or give the old rows as continual.previous_data: FILE")
    return path


def previous_training_rows(previous: PreviousRun, override: Path | None) -> Split:
    """The old run's training rows (its train file minus the validation rows it split off, with the same seed),
    label ids into the old labels; or every row of ``continual.previous_data``."""
    path = checked_file(previous, "train", override)
    if path is None:
        raise UserError(f"--from {previous.folder}: its manifest.json records no train file; give the old rows as "
                        "continual.previous_data: FILE")
    config = previous.recipe.data
    index = {name: i for i, name in enumerate(previous.label_names)}
    if override is not None:
        frame, _ = read_split(path, config, "previous")
        unknown = sorted({str(v) for v in frame[config.label_column]} - set(index))
        if unknown:
            raise UserError(f"continual.previous_data: {path} has label(s) {', '.join(unknown[:5])} that the run "
                            f"{previous.folder} was not trained on")
        return to_split(frame, path, config, "previous", index)
    old_config = config.model_copy(update={"train": path, "test": None, "augment": None, "balance": "none"})
    data = load_classification_data(old_config, previous.recipe.train.seed)
    return relabel(data.train, data.label_names, previous.label_names)


# ----------------------------------------------------------------------------- the model


def classifier_output_layer(model: nn.Module, num_labels: int) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the classifier's last linear layer: the last ``nn.Linear``
    outside the embeddings and the block stack with ``num_labels`` outputs."""
    anatomy = describe(model)
    head = set(anatomy.head)
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_labels and f"{name}.weight" in head:
            found = name
    if found is None:
        raise UserError(f"{type(model).__name__}: found no classifier layer with {num_labels} outputs to grow")
    parent_name, _, attribute = found.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attribute, getattr(parent, attribute)


def grow_classifier_head(model: nn.Module, old_labels: list[str], labels: list[str]) -> nn.Module:
    """Give ``model`` (a classifier over ``old_labels``) outputs for ``labels`` (``old_labels`` then new ones).

    The old rows of the output layer are copied unchanged, so the old labels' logits stay exactly as they were;
    the new rows start as transformers initialises a fresh head (normal, std ``initializer_range``; bias 0)."""
    if labels[:len(old_labels)] != old_labels:
        raise ValueError("the label list must start with the old labels, in their order")
    config = model.config
    if len(labels) > len(old_labels):
        parent, attribute, layer = classifier_output_layer(model, len(old_labels))
        grown = nn.Linear(layer.in_features, len(labels), bias=layer.bias is not None,
                          device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            grown.weight.normal_(0.0, getattr(config, "initializer_range", 0.02))
            grown.weight[:len(old_labels)] = layer.weight
            if layer.bias is not None:
                grown.bias.zero_()
                grown.bias[:len(old_labels)] = layer.bias
        setattr(parent, attribute, grown)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    if hasattr(model, "num_labels"):
        model.num_labels = len(labels)
    return model


def load_previous_model(previous: PreviousRun) -> tuple[Any, nn.Module]:
    """(tokenizer, plain classifier) of a finished run: its merged model, or its base with a LoRA-family adapter
    merged in. Methods whose weights cannot be merged (prefix, prompt, p-tuning, bottleneck adapters) are refused."""
    task = task_for(previous.recipe.task)
    model = task.load_trained(previous.folder, previous.recipe)  # the loader of predict/eval (checked files)
    if hasattr(model, "peft_config"):
        if not hasattr(model, "merge_and_unload"):
            raise UserError(f"--from {previous.folder}: continuing a {previous.recipe.method.name} run (base + "
                            "adapter that cannot be merged) is not supported yet; continue a full, freeze, LoRA, "
                            "DoRA, AdaLoRA or IA3 run")
        model = model.merge_and_unload()
    elif (previous.folder / "adapter").is_dir():
        raise UserError(f"--from {previous.folder}: continuing a {previous.recipe.method.name} run (base + adapter "
                        "that cannot be merged) is not supported yet; continue a full, freeze, LoRA, DoRA, AdaLoRA "
                        "or IA3 run")
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return load_tokenizer(previous.folder / "model"), model


# ----------------------------------------------------------------------------- the continual run


class ContinualRun(LoopHooks):
    """The loop hooks of a continual run, and what it measures once training is over.

    Build it with :func:`prepare_continual`; ``data`` is the job's data relabelled into the combined labels (with
    the replayed old rows appended to its train split under ``strategy: replay``)."""

    def __init__(self, recipe: Recipe, previous: PreviousRun, data: ClassificationData, new_rows: int,
                 old_sample: Split, log) -> None:
        self.recipe = recipe
        self.config = recipe.continual
        self.previous = previous
        self.data = data
        self.new_rows = new_rows  # train rows [0, new_rows) are new, the rest replayed old rows
        self.old_sample = old_sample
        self.log = log
        self.ewc: ElasticWeightConsolidation | None = None

    # --- loop hooks ----------------------------------------------------------------------------------

    def load_model(self, task: Task, recipe: Recipe, label_names: list[str]) -> tuple[Any, nn.Module]:
        tokenizer, model = load_previous_model(self.previous)
        grow_classifier_head(model, self.previous.label_names, label_names)
        return tokenizer, model

    def model_ready(self, task: Task, recipe: Recipe, model: nn.Module, method: Method, tokenizer: Any,
                    device: torch.device, log) -> None:
        if self.config.strategy != "ewc":
            return
        self.ewc = ElasticWeightConsolidation(list(method.optimizer_parameters(model)), self.config.ewc_lambda)
        encoded = encode_split(tokenizer, self.old_sample, recipe.data.max_length)
        rows = ((({key: value.to(device) for key, value in batch.items() if key != "labels"}),
                 int(batch["labels"][0]))
                for batch in iterate_batches(encoded, [[i] for i in range(len(encoded))], tokenizer.pad_token_id))
        self.ewc.estimate(model, rows, len(self.previous.label_names))
        log(f"continual ewc: Fisher information of {self.ewc.rows} old rows (sum {self.ewc.fisher_total():.4g}); "
            f"penalty lambda {self.config.ewc_lambda:g}")

    def batches_per_epoch(self, task: Task, recipe: Recipe, encoded, batch_size: int) -> int:
        if self.config.strategy == "replay":
            return replay_batch_count(self.new_rows, batch_size, self.config.replay)
        return task.batches_per_epoch(recipe, encoded, batch_size)

    def training_batches(self, task: Task, recipe: Recipe, encoded, batch_size: int,
                         generator: random.Random) -> list[list[int]]:
        if self.config.strategy == "replay":
            return replay_batches(self.new_rows, len(encoded) - self.new_rows, batch_size, self.config.replay,
                                  generator)
        return task.training_batches(recipe, encoded, batch_size, generator)

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return self.ewc.penalty() if self.ewc is not None else None

    # --- facts and forgetting ------------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        """What ``run.json`` keeps about the start: lineage, strategy, labels kept and added, replayed rows."""
        old = self.previous.label_names
        return {"from": str(self.previous.folder), "from_name": self.previous.recipe.name,
                "strategy": self.config.strategy,
                "replay": self.config.replay if self.config.strategy == "replay" else None,
                "ewc_lambda": self.config.ewc_lambda if self.config.strategy == "ewc" else None,
                "previous_labels": len(old), "new_labels": self.data.label_names[len(old):],
                "previous_rows_sampled": len(self.old_sample)}

    def measure_forgetting(self, model: nn.Module, tokenizer: Any, device: torch.device, run_dir: Path,
                           new_test: dict[str, Any] | None, log) -> dict[str, Any] | None:
        """Evaluate the trained model on the old run's test file into ``eval/previous-test/`` and write
        ``forgetting.json``; None (and a log line) when the old run had no test file."""
        previous = self.previous
        path = checked_file(previous, "test", None) if previous.recipe.data.test is not None else None
        if path is None:
            log(f"continual: {previous.folder.name} had no test file; forgetting is not measured")
            return None
        config = previous.recipe.data
        index = {name: i for i, name in enumerate(previous.label_names)}
        frame, _ = read_split(path, config, "previous-test")
        split = to_split(frame, path, config, "previous-test", index)
        encoded = encode_split(tokenizer, split, self.recipe.data.max_length)
        probabilities, _ = predict_probabilities(model, encoded, 64, tokenizer.pad_token_id, device)
        write_evaluation(run_dir / "eval" / PREVIOUS_TEST_DIR, self.data.label_names, np.array(split.labels),
                         probabilities, split.texts, split.text_pairs, split.source_rows)
        after = old_label_metrics(np.array(split.labels), probabilities.argmax(axis=1))
        before_all = previous.status.get("test") or {}
        before = {key: before_all.get(key) for key in after}
        drop = {key: (before[key] - after[key]) if isinstance(before[key], (int, float)) else None for key in after}
        record = {"from": str(previous.folder), "strategy": self.config.strategy, "previous_test": str(path),
                  "rows": len(split), "before": before, "after": after, "drop": drop,
                  "new_test": ({key: new_test.get(key) for key in ("accuracy", "f1_macro", "n_examples")}
                               if new_test else None),
                  "note": "f1_macro over the old run's labels, so that before and after compare"}
        write_json_atomic(run_dir / FORGETTING_NAME, record)
        return record


def old_label_metrics(gold: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, and macro F1 over the labels present in ``gold`` (the old run's labels, whose F1 the old run
    reported; the new labels are absent from the old test file and would only dilute the mean)."""
    labels = sorted(set(gold.tolist()))
    return {"accuracy": float(accuracy_score(gold, predicted)),
            "f1_macro": float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0))}


def forgetting_lines(record: dict[str, Any] | None) -> list[str]:
    """The end-of-run summary lines of ``forgetting.json``."""
    if not record:
        return []
    before, after, drop = record["before"], record["after"], record["drop"]
    lines = [f"  forgetting ({record['strategy']}) on the previous run's test file ({record['rows']} rows):"]
    for key in ("accuracy", "f1_macro"):
        if isinstance(before.get(key), (int, float)):
            lines.append(f"    {key:<9} {before[key]:.4f} before -> {after[key]:.4f} after "
                         f"(drop {100 * drop[key]:+.2f} points)")
        else:
            lines.append(f"    {key:<9} {after[key]:.4f} after (the previous run recorded no test {key})")
    return lines


def prepare_continual(recipe: Recipe, data: ClassificationData, log) -> ContinualRun | None:
    """The continual run of ``recipe`` (None when it has no ``continual`` section): the previous run read and
    checked, the job's data relabelled into the combined labels, the old rows sampled (and appended to the
    train split under ``strategy: replay``)."""
    config = recipe.continual
    if config is None:
        return None
    if config.from_run is None:
        raise UserError("continual: needs the run to continue from: tuneforge train RECIPE --from RUN_DIR "
                        "(or continual.from_run)")
    previous = read_previous_run(config.from_run, recipe)
    labels = combined_labels(previous.label_names, data.label_names)
    old_rows = previous_training_rows(previous, config.previous_data)
    sample = old_rows.subset(stratified_sample(old_rows.labels, config.previous_rows, recipe.train.seed), "replay")
    train = relabel(data.train, data.label_names, labels)
    new_rows = len(train)
    notes = list(data.notes)
    added = len(labels) - len(previous.label_names)
    notes.append(f"continual: from {previous.folder.name} ({len(previous.label_names)} labels kept, {added} added); "
                 f"strategy {config.strategy}")
    if config.strategy == "replay":
        train = concatenate(train, sample, "train")
        notes.append(f"continual replay: {len(sample)} old training rows (stratified sample of {len(old_rows)}) "
                     f"appended to train; {config.replay:.0%} of every batch is drawn from them")
    relabelled = ClassificationData(
        label_names=labels, train=train, validation=relabel(data.validation, data.label_names, labels),
        test=relabel(data.test, data.label_names, labels) if data.test is not None else None, notes=notes)
    return ContinualRun(recipe, previous, relabelled, new_rows, sample, log)
