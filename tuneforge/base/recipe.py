"""The recipe: YAML in, typed and fully validated config objects out.

This module owns the recipe's schema and its error messages. ``read_recipe(path, overrides, method_configs)``
returns a :class:`Recipe` or raises :class:`~tuneforge.base.errors.UserError` listing every problem,
each on its own line as ``file:line:col: problem (fix)``. The ``method:`` section's keys belong to each method
(``tuneforge.core.methods``), which sits above this layer: the caller hands in the catalogue of method configs
(name -> :class:`MethodConfig` subclass); :mod:`tuneforge.core.recipe` is the usual caller. This module does not
look inside data files or load models; :mod:`tuneforge.core.engine.validate` does that.
"""

from __future__ import annotations

import re
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from tuneforge.base.errors import UserError, did_you_mean

# name -> the config class of that method's `method:` section (tuneforge.core.methods.method_configs()).
MethodConfigs = Mapping[str, "type[MethodConfig]"]

METRIC_NAMES = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc", "loss",
                "f1_micro", "subset_accuracy", "hamming_loss")  # the last three: task multilabel
LOWER_IS_BETTER = ("loss", "hamming_loss")
TASKS = ("classification", "multilabel", "image-classification", "sft", "causal-lm", "masked-lm", "multitask")

# Keys of the recipe whose values are file paths; relative ones are resolved against the
# directory of the recipe file (recipes stay portable), or the working directory for --set.
PATH_KEYS = (("data", "train"), ("data", "validation"), ("data", "test"),
             ("data", "augment", "forward_model"), ("data", "augment", "backward_model"),
             ("data", "augment", "wordnet_dir"), ("continual", "from_run"), ("continual", "previous_data"))
# Keys that name a folder or a model (alias, hub id): resolved like PATH_KEYS only when such a folder exists.
FOLDER_OR_NAME_KEYS = (("distill", "teacher"),)


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodConfig(BaseModel):
    """Keys of the recipe's ``method:`` section common to all methods; each method subclasses it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: str


EDA_OPS = ("synonym", "insert", "swap", "delete")


class AugmentConfig(StrictModel):
    """Extra training examples made from the train split (only), after the validation split.

    ``eda``: Easy Data Augmentation (Wei & Zou, 2019): synonym replacement, random insertion of a
    synonym, random swap, random deletion. Synonyms, both offline: the nearest neighbours of a word in the
    input embeddings of the recipe's own model, or a local WordNet. ``back_translation``: text -> pivot language ->
    back, with two local translation models (e.g. Marian ``opus-mt`` folders).
    """

    method: Literal["eda", "back_translation"] = Field("eda", description="eda or back_translation.")
    ops: list[Literal["synonym", "insert", "swap", "delete"]] = Field(
        default_factory=lambda: list(EDA_OPS), min_length=1, description="EDA operations to draw from.")
    n_per_example: int = Field(1, ge=1, le=32, description="New examples per training example.")
    alpha: float = Field(0.1, gt=0, le=0.5, description="EDA: share of a text's words each operation changes.")
    seed: int | None = Field(None, description="Default: train.seed.")
    synonyms: Literal["embedding", "wordnet"] = Field(
        "embedding", description="EDA synonym source: the model's own input embeddings, or a local WordNet.")
    wordnet_dir: Path | None = Field(None, description="WordNet dict folder; default: Debian's wordnet-base.")
    forward_model: Path | None = Field(None, description="back_translation: local model folder, source -> pivot.")
    backward_model: Path | None = Field(None, description="back_translation: local model folder, pivot -> source.")
    batch_size: int = Field(16, ge=1, description="back_translation: texts per translation batch.")
    num_beams: int = Field(1, ge=1, description="back_translation: beams (1 = sampling, more varied).")

    @field_validator("ops")
    @classmethod
    def _distinct_ops(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each operation may appear once")
        return value


class DataConfig(StrictModel):
    """Where the examples come from and how they are read."""

    # Required for every task but multitask, whose tasks may each name their own files (checked in validate_recipe).
    train: Path | None = Field(None, description="Training file: CSV, TSV, JSON, JSONL or Parquet.")
    validation: Path | None = Field(None, description="If null: a stratified split of train.")
    test: Path | None = None
    text_column: str = "text"
    text_pair_column: str | None = Field(None, description="Second text of sentence-pair tasks.")
    label_column: str = "label"
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per example (pair) after truncation.")
    on_empty: Literal["error", "drop"] = Field("error", description="Empty or whitespace-only texts.")
    balance: Literal["none", "oversample", "undersample"] = Field(
        "none", description="Resample the train split (after the validation split) to equal label counts.")
    augment: AugmentConfig | None = Field(None, description="Augment the train split; see docs/data.md.")
    label_delimiter: str | None = Field(
        None, min_length=1, description="task multilabel: labels in one string, split on this (e.g. ','); "
                                        "null: the label column holds a list.")
    image_column: str = Field("image", description="task image-classification, CSV/JSONL data: the column of "
                                                   "image paths (relative to the data file's folder).")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="task image-classification: unreadable or corrupt images stop the run (listed by "
                             "path), or are skipped and listed as a note.")


class EarlyStoppingConfig(StrictModel):
    """Stop when the validation metric has not improved for ``patience`` epochs."""

    metric: str = "f1_macro"
    patience: int = Field(2, ge=1)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRIC_NAMES:
            raise ValueError(f"unknown metric '{value}'{did_you_mean(value, METRIC_NAMES)}; "
                             f"choose one of {', '.join(METRIC_NAMES)}")
        return value

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER


class TrainConfig(StrictModel):
    """The optimisation: schedule, precision, regularisation, stopping."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1, description="Default: 2 x batch_size.")
    learning_rate: float = Field(5.0e-5, gt=0)
    head_learning_rate: float | None = Field(None, gt=0, description="Discriminative LR of the new head.")
    layer_lr_decay: float = Field(1.0, gt=0, le=1, description="LR factor per encoder layer going down.")
    weight_decay: float = Field(0.01, ge=0)
    dropout: float | None = Field(None, ge=0, lt=1, description="Override the model's dropout.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    grad_accum_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    class_weights: Union[Literal["none", "balanced"], dict[str, float]] = "none"
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    seed: int = 42
    log_every_steps: int = Field(50, ge=1)
    group_by_length: bool = Field(True, description="Batch examples of similar length together.")
    activation_cache: bool = Field(
        True, description="Compute the output of the frozen bottom layers once and reuse it every epoch.")
    num_threads: int | None = Field(None, ge=1, description="Torch CPU threads; default: physical cores.")
    time_budget_minutes: float | None = Field(
        None, gt=0, description="Stop training once this much wall-clock time has passed (checked after each "
                                "optimizer step; the partial epoch is validated). `tuneforge compare` sets it.")
    checkpoint_every_steps: int | None = Field(
        500, ge=1, description="Write a resumable checkpoint every this many optimizer steps (and after every "
                               "epoch); null: after every epoch only. See docs/resume.md.")
    keep_checkpoints: int = Field(
        2, ge=0, description="How many of the newest checkpoints to keep in RUN/checkpoints; 0: write none "
                             "(the run cannot be resumed).")
    max_bad_steps: int = Field(
        10, ge=1, description="Stop with an error after this many batches whose loss is not finite (each such "
                              "batch's optimizer step is skipped).")
    fail_if_not_learning: bool = Field(
        False, description="Exit non-zero when the final model is no better than one that learned nothing "
                            "(run.json status 'completed: did not learn'; docs/tasks.md).")
    calibrate: bool = Field(
        True, description="Single-label classification (text, text pairs, images): after training, fit a "
                          "temperature on the validation split (temperature scaling) so that confidences match "
                          "accuracy; calibration.json, ECE before/after in the metrics; predict, eval and serve "
                          "report calibrated confidences (docs/report.md). Other tasks: not done.")
    report_to: Literal["none", "tensorboard", "mlflow"] = Field(
        "none", description="Also log metrics.jsonl's metrics to TensorBoard (RUN/tensorboard) or MLflow "
                            "(a local file store, RUN/mlruns, unless MLFLOW_TRACKING_URI is set).")


class DistillConfig(StrictModel):
    """Knowledge distillation (docs/distillation.md): the recipe's model (the student) learns from the labels and
    from a fine-tuned teacher's logits, with loss (1 - alpha) * CE + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))."""

    teacher: str = Field(description="A tuneforge run folder, or a sequence- (image-, for task image-classification) "
                                     "classification model (alias, folder, hub id) trained for the same label names.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation term (0 = labels only).")
    temperature: float = Field(2.0, gt=0, description="Softens both distributions; T^2 keeps gradient scale.")
    student_layers: Union[Literal["every_other"], list[int], None] = Field(
        None, description="Shrink the student to these encoder layers (0-based) or every other one; "
                          "null: keep all its layers.")

    @field_validator("student_layers")
    @classmethod
    def _layer_list(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or len(set(value)) != len(value) or min(value) < 0):
            raise ValueError("give distinct, non-negative layer indices, e.g. [0, 2, 4], or every_other")
        return value


class ContinualConfig(StrictModel):
    """Continual fine-tuning (docs/continual.md): start from a finished run (``tuneforge train --from RUN_DIR``
    sets ``from_run``), keep its labels, add the new data's, and hold on to what it learned."""

    from_run: Path | None = Field(None, description="The finished run to continue from; `tuneforge train --from "
                                                    "RUN_DIR` sets it.")
    strategy: Literal["replay", "ewc", "none"] = Field(
        "replay", description="replay: mix old training rows into every batch; ewc: penalise moving the weights the "
                              "old task relied on (elastic weight consolidation); none: plain sequential training.")
    replay: float = Field(0.5, gt=0, lt=1, description="strategy replay: share of each batch drawn from the old rows "
                                                     "(0.5: measured on BANKING77, docs/continual.md).")
    previous_rows: int = Field(5000, ge=1, description="Size of the stratified sample of the old run's training rows "
                                                       "that replay draws from and EWC's Fisher information is "
                                                       "computed on.")
    previous_data: Path | None = Field(None, description="The old training rows; default: the old run's train file "
                                                          "from its manifest.json, checked by its sha256.")
    ewc_lambda: float = Field(1000.0, gt=0, description="strategy ewc: weight of the penalty "
                                                        "lambda/2 * sum_i F_i (theta_i - theta_old_i)^2.")


class ExportConfig(StrictModel):
    """The integrity gates that check every saved, merged and exported model (docs/trust.md)."""

    max_metric_drop: float = Field(
        0.01, ge=0, le=1, description="Fail when a reloaded or exported model's validation accuracy on the probe "
                                      "rows is lower than the in-memory model's by more than this (0.01 = 1 point).")


class MultiLabelConfig(StrictModel):
    """``task: multilabel``: each example carries any number of labels; one sigmoid per label."""

    pos_weight: Literal["none", "balanced"] = Field(
        "none", description="balanced: weight each label's positives by negatives / positives (BCE pos_weight).")
    thresholds: Union[Literal["per_label", "global"], float] = Field(
        "per_label", description="Decision thresholds: per_label (each tuned on validation for F1), global "
                                 "(one tuned on validation for micro F1) or a fixed number such as 0.5.")
    init_bias: Literal["prior", "zero"] = Field(
        "prior", description="Output bias at the start: prior (each label's log prior odds in train, so the "
                             "untrained model already predicts the base rates) or zero (the fresh head's).")
    loss: Literal["bce", "focal", "asymmetric"] = Field(
        "bce", description="bce; focal (gamma 2); asymmetric (gamma- 4, gamma+ 0, negatives' probability "
                           "shifted by 0.05) for sparse positives. docs/tasks.md.")
    head_learning_rate: float | None = Field(
        1.0e-3, gt=0, description="LR of the new head (pooler + output layer) when train.head_learning_rate is "
                                  "unset, never below train.learning_rate; null: train.learning_rate.")

    @field_validator("thresholds")
    @classmethod
    def _threshold_in_range(cls, value: Any) -> Any:
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError("a fixed threshold must lie between 0 and 1")
        return value


class MixConfig(StrictModel):
    """MixUp or CutMix: a batch is mixed with a shuffled copy of itself, with Beta(alpha, alpha) weight."""

    alpha: float = Field(1.0, gt=0, description="Beta(alpha, alpha) of the mixing weight lambda.")
    probability: float = Field(1.0, ge=0, le=1, description="Share of training batches that are mixed.")


class ImageConfig(StrictModel):
    """``task: image-classification``: augmentation of the train split (validation and test are never changed).

    When both ``mixup`` and ``cutmix`` are given, a mixed batch uses one of them, chosen with equal odds."""

    random_resized_crop: tuple[float, float] | None = Field(
        None, description="Crop a random [min, max] share of the image area (aspect 3/4..4/3), then resize.")
    horizontal_flip: bool = Field(False, description="Mirror half the training images.")
    mixup: MixConfig | None = None
    cutmix: MixConfig | None = None

    @field_validator("random_resized_crop")
    @classmethod
    def _crop_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1] <= 1:
            raise ValueError("give [min, max] shares of the image area with 0 < min <= max <= 1, e.g. [0.6, 1.0]")
        return value


class GenerationConfig(StrictModel):
    """How a generative run decodes its held-out prompts (``eval/samples.jsonl``) and ``tuneforge generate``."""

    max_new_tokens: int = Field(96, ge=1, le=4096, description="Tokens generated per prompt at most.")
    temperature: float = Field(0.7, gt=0, description="Sampled generations: softmax temperature.")
    top_p: float = Field(0.9, gt=0, le=1, description="Sampled generations: nucleus sampling mass.")
    top_k: int = Field(50, ge=0, description="Sampled generations: keep the k likeliest tokens (0 = all).")
    prompts: int = Field(200, ge=0, description="Held-out prompts generated greedily (exact match, ROUGE-L).")
    sampled_prompts: int = Field(10, ge=0, description="Of those, how many also get a sampled generation.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate() call.")
    evaluate_base: bool = Field(True, description="Also measure the untrained model (validation loss and "
                                                  "perplexity, test generations) to compare against.")
    seed: int = Field(0, description="Seed of the sampled generations.")


class GenerativeConfig(StrictModel):
    """``task: sft | causal-lm | masked-lm``: columns, templating, packing, masking (docs/generative.md)."""

    instruction_column: str = Field("instruction", description="sft: the instruction (alpaca style).")
    input_column: str | None = Field("input", description="sft: optional extra input appended to the instruction.")
    output_column: str = Field("output", description="sft: the reference response.")
    messages_column: str | None = Field(None, description="sft: a column of chat lists [{role, content}, ...]; "
                                                          "used instead of the three columns above.")
    system_prompt: str | None = Field(None, description="sft: system message put before every conversation.")
    chat_template: bool = Field(True, description="sft: render with the tokenizer's chat template; false: a "
                                                  "plain '### Instruction / ### Response' prompt.")
    packing: bool = Field(False, description="sft/causal-lm: pack several examples into each max_length row, "
                                             "each attending only to itself.")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked-lm: share of tokens masked.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)


SINGLE_LABEL_METRICS = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc")
MULTI_LABEL_METRICS = ("f1_micro", "f1_macro", "subset_accuracy", "accuracy", "hamming_loss", "roc_auc")


class TaskSpec(StrictModel):
    """One task of ``task: multitask`` (docs/tasks.md, "Multi-task"): its data, its head, its loss weight.

    Files and columns left out are taken from the recipe's ``data:`` section (a file shared by several tasks,
    each with its own label column)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", max_length=60,
                      description="Names the head, its metrics (validation_NAME/accuracy) and its predict columns.")
    type: Literal["single_label", "multi_label"] = Field(
        "single_label", description="single_label: softmax + cross-entropy; multi_label: one sigmoid per label + BCE.")
    train: Path | None = Field(None, description="This task's training file; default: data.train.")
    validation: Path | None = Field(None, description="Default: data.validation, else a stratified split of train.")
    test: Path | None = Field(None, description="Default: data.test (when the task's label column is in it).")
    text_column: str | None = Field(None, description="Default: data.text_column.")
    text_pair_column: str | None = Field(None, description="Default: data.text_pair_column.")
    label_column: str | None = Field(None, description="Default: data.label_column.")
    label_delimiter: str | None = Field(None, min_length=1, description="multi_label: labels in one string, split "
                                                                        "on this; default: data.label_delimiter.")
    weight: float = Field(1.0, gt=0, description="This task's loss is multiplied by it.")
    metric: str | None = Field(None, description="The task's headline validation metric (the run's mean_metric is "
                                                 "their mean); default accuracy (single_label), f1_micro (multi_label).")

    @model_validator(mode="after")
    def _metric_fits_type(self) -> "TaskSpec":
        allowed = SINGLE_LABEL_METRICS if self.type == "single_label" else MULTI_LABEL_METRICS
        if self.metric is None:
            self.metric = allowed[0]
        elif self.metric not in allowed:
            raise ValueError(f"metric '{self.metric}' does not fit a {self.type} task"
                             f"{did_you_mean(self.metric, allowed)}; choose one of {', '.join(allowed)}")
        return self


class MultiTaskConfig(StrictModel):
    """``task: multitask``: how batches are drawn from the tasks and how the shared encoder is pooled.

    Every batch comes from one task. ``proportional``: each example once per epoch, batches of all tasks shuffled
    together; ``round_robin``: each example once per epoch, tasks take turns (a finished task drops out);
    ``temperature``: as many batches as proportional, task i drawn with probability n_i^(1/T) / sum_j n_j^(1/T)
    (T = 1: proportional; larger T: smaller tasks more often, repeated within the epoch)."""

    sampling: Literal["proportional", "temperature", "round_robin"] = "proportional"
    temperature: float = Field(2.0, ge=1, description="sampling temperature: T in p_i ~ n_i^(1/T).")
    pooling: Literal["mean", "cls"] = Field(
        "mean", description="Text vector the heads read: mean of the last hidden states over real tokens, or the "
                            "first token's.")


GENERATIVE_TASKS = ("sft", "causal-lm", "masked-lm")


class Recipe(StrictModel):
    """A whole fine-tuning job."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    model: str = Field(description="Alias (see `tuneforge models`), local folder or hub id.")
    task: Literal["classification", "multilabel", "image-classification", "sft", "causal-lm", "masked-lm",
                  "multitask"] = "classification"
    data: DataConfig
    method: SerializeAsAny[MethodConfig]
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig | None = Field(None, description="Knowledge distillation from a teacher.")
    multilabel: MultiLabelConfig | None = Field(None, description="task multilabel: loss weights, thresholds.")
    image: ImageConfig | None = Field(None, description="task image-classification: train-split augmentation.")
    generative: GenerativeConfig | None = Field(
        None, description="task sft, causal-lm or masked-lm: columns, chat template, packing, generation.")
    tasks: list[TaskSpec] | None = Field(None, description="task multitask: the tasks sharing one encoder, one "
                                                          "head each (docs/tasks.md).")
    multitask: MultiTaskConfig | None = Field(None, description="task multitask: sampling across tasks, pooling.")
    continual: ContinualConfig | None = Field(None, description="Continue from a finished run: `tuneforge train "
                                                               "--from RUN_DIR` (docs/continual.md).")

    @field_validator("tasks")
    @classmethod
    def _distinct_task_names(cls, value: list[TaskSpec] | None) -> list[TaskSpec] | None:
        if value is not None:
            names = [spec.name for spec in value]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"task name(s) {', '.join(map(repr, repeated))} appear more than once; "
                                 "give each task its own name")
            if len(value) < 2:
                raise ValueError("task multitask needs at least two tasks; for one, use task classification or "
                                 "multilabel")
        return value

    @model_validator(mode="after")
    def _sections_match_task(self) -> "Recipe":
        if self.multilabel is not None and self.task != "multilabel":
            raise ValueError(f"the multilabel section needs `task: multilabel` (task is {self.task})")
        if self.image is not None and self.task != "image-classification":
            raise ValueError(f"the image section needs `task: image-classification` (task is {self.task})")
        if self.task == "multilabel" and self.multilabel is None:
            self.multilabel = MultiLabelConfig()
        if self.task == "image-classification" and self.image is None:
            self.image = ImageConfig()
        if self.generative is not None and self.task not in GENERATIVE_TASKS:
            raise ValueError(f"the generative section needs task sft, causal-lm or masked-lm (task is {self.task})")
        if self.task in GENERATIVE_TASKS and self.generative is None:
            self.generative = GenerativeConfig()
        if (self.tasks is not None or self.multitask is not None) and self.task != "multitask":
            raise ValueError(f"the tasks and multitask sections need `task: multitask` (task is {self.task})")
        if self.task == "multitask":
            if self.tasks is None:
                raise ValueError("task multitask needs a `tasks:` list, e.g. tasks: [{name: sentiment, train: "
                                 "a.jsonl}, {name: spam, train: b.jsonl}] (docs/tasks.md)")
            if self.multitask is None:
                self.multitask = MultiTaskConfig()
            unfiled = [spec.name for spec in self.tasks if spec.train is None and self.data.train is None]
            if unfiled:
                raise ValueError(f"task(s) {', '.join(unfiled)} have no training file: give tasks[].train, or "
                                 "data.train for a file the tasks share")
        return self
    export: ExportConfig = Field(default_factory=ExportConfig)

    def to_yaml_dict(self) -> dict[str, Any]:
        """The fully resolved recipe as plain YAML-able data (paths as strings)."""
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- loading


def read_recipe(path: str | Path, overrides: list[str] | None, method_configs: MethodConfigs) -> Recipe:
    """Read, override and validate a recipe file; raise UserError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found (check the path)")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: a byte-order mark (Windows editors) is dropped
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: is not UTF-8 text (byte {exc.start + 1} is {exc.object[exc.start:exc.start + 1]!r}); "
                        "save the recipe as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise UserError(f"{path}: is nested too deeply to be a recipe (lists or mappings inside each other thousands "
                        "of times)") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of keys (name, model, data, method, train)")
    _resolve_paths(raw, path.parent)
    file_method = raw.get("method", {}).get("name") if isinstance(raw.get("method"), dict) else None
    set_keys: set[tuple[str, ...]] = set()
    for item in overrides or []:
        set_keys.add(apply_override(raw, item))
    drop_keys_of_replaced_method(raw, file_method, set_keys, method_configs)
    return check_recipe(raw, method_configs, source=path, text=text, overridden=set_keys)


def drop_keys_of_replaced_method(raw: dict[str, Any], file_method: str | None, set_keys: set[tuple[str, ...]],
                                 method_configs: MethodConfigs) -> None:
    """`--set method.name=X` on a recipe written for method Y: Y's own keys (r, alpha, ...) are not typos,
    so they are dropped rather than reported; keys the new method knows, and keys given with --set, stay."""
    method = raw.get("method")
    if ("method", "name") not in set_keys or not isinstance(method, dict) or file_method not in method_configs:
        return
    new_name = method.get("name")
    if new_name == file_method or new_name not in method_configs:
        return
    old_keys = set(method_configs[file_method].model_fields)
    new_keys = set(method_configs[new_name].model_fields)
    for key in list(method):
        if key in old_keys and key not in new_keys and ("method", key) not in set_keys:
            del method[key]


def apply_override(raw: dict[str, Any], item: str) -> tuple[str, ...]:
    """Apply one ``dotted.key=value`` (value parsed as YAML) to the raw recipe dict."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.epochs=2")
    key, _, value_text = item.partition("=")
    keys = tuple(part for part in key.strip().split(".") if part)
    if not keys:
        raise UserError(f"--set {item!r}: the key is empty")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    node: Any = raw
    resolved: list[Any] = []
    for depth, part in enumerate(keys):
        if isinstance(node, list):  # a number names an item of a list section: --set tasks.0.train=FILE
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"--set {item!r}: {'.'.join(keys[:depth])} is a list of {len(node)}; name an item "
                                f"by its position, 0 to {len(node) - 1}")
            part = int(part)
        elif depth < len(keys) - 1 and not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        resolved.append(part)
        if depth < len(keys) - 1:
            node = node[part]
    keys = tuple(resolved)
    is_path = keys in PATH_KEYS or (len(keys) == 3 and keys[0] == "tasks" and keys[2] in ("train", "validation", "test"))
    if is_path and isinstance(value, str):
        value = str(Path(value).expanduser().resolve())
    elif keys in FOLDER_OR_NAME_KEYS and isinstance(value, str) and Path(value).expanduser().is_dir():
        value = str(Path(value).expanduser().resolve())
    node[keys[-1]] = value
    return keys


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    task_specs = raw.get("tasks") if isinstance(raw.get("tasks"), list) else []
    for spec in task_specs:  # task multitask: each task's own files
        for key in ("train", "validation", "test"):
            if isinstance(spec, dict) and isinstance(spec.get(key), str):
                value = Path(spec[key]).expanduser()
                spec[key] = str(value if value.is_absolute() else (base / value).resolve())
    for keys in PATH_KEYS:
        node: Any = raw
        for part in keys[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            value = Path(node[keys[-1]]).expanduser()
            node[keys[-1]] = str(value if value.is_absolute() else (base / value).resolve())
    for keys in FOLDER_OR_NAME_KEYS:
        node = raw
        for part in keys[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            value = Path(node[keys[-1]]).expanduser()
            if not value.is_absolute() and (base / value).is_dir():
                node[keys[-1]] = str((base / value).resolve())


def check_recipe(raw: dict[str, Any], method_configs: MethodConfigs, source: Path | str = "recipe",
                 text: str | None = None, overridden: set[tuple[str, ...]] | None = None) -> Recipe:
    """Validate a raw recipe dict into a Recipe, or raise UserError with every problem; the ``method:``
    section against ``method_configs[method.name]``."""
    method_names = list(method_configs)
    problems: list[tuple[tuple[Any, ...], str]] = []
    raw = dict(raw)
    method_raw = raw.pop("method", None)
    method: MethodConfig | None = None
    if method_raw is None:
        problems.append((("method",), "missing: add a method section, e.g. `method: {name: full}`"))
    elif isinstance(method_raw, str):
        method_raw = {"name": method_raw}
    if isinstance(method_raw, dict):
        name = method_raw.get("name")
        if name is None:
            problems.append((("method", "name"), f"missing: choose one of {', '.join(method_names)}"))
        elif name not in method_names:
            problems.append((("method", "name"), f"unknown method '{name}'{did_you_mean(str(name), method_names)}; "
                             f"choose one of {', '.join(method_names)}"))
        else:
            config_class = method_configs[name]
            try:
                method = config_class.model_validate(method_raw)
            except ValidationError as exc:
                problems += [(("method",) + tuple(e["loc"]), _explain(e, config_class, e["loc"]))
                             for e in exc.errors()]
    elif method_raw is not None:
        problems.append((("method",), "must be a mapping with a `name` key"))

    if raw.get("task") != "multitask" and isinstance(raw.get("data"), dict) and raw["data"].get("train") is None:
        problems.append((("data", "train"), "missing required key"))  # only multitask's tasks bring their own
    recipe = None
    try:
        # a placeholder method while the method section itself has problems (reported above)
        recipe = Recipe.model_validate({**raw, "method": method or MethodConfig(name="full")})
    except ValidationError as exc:
        problems += [(tuple(e["loc"]), _explain(e, Recipe, e["loc"])) for e in exc.errors()
                     if not (e["loc"] and e["loc"][0] == "method")]
    if problems or recipe is None:
        raise UserError("\n".join(_format(source, text, loc, msg, overridden or set()) for loc, msg in problems))
    return recipe


def _explain(error: dict[str, Any], root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        fields = _fields_at(root, loc[:-1])
        return f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), fields)}; known keys here: {', '.join(fields)}"
    if kind == "missing":
        return "missing required key"
    message = error["msg"]
    message = re.sub(r"^Value error, ", "", message)
    given = error.get("input")
    if kind not in ("model_type", "dict_type") and not isinstance(given, (dict, list)):
        message += f" (got {given!r})"
    return message


def _fields_at(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = root
    for part in loc:
        if isinstance(part, int):  # an item of a list section (tasks[1]): same model
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        candidates, pending = [], [field.annotation]
        while pending:  # unwrap Optional[...] and list[...] down to the section's model
            annotation = pending.pop()
            candidates.append(annotation)
            pending += list(getattr(annotation, "__args__", ()))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _format(source: Path | str, text: str | None, loc: tuple[Any, ...], msg: str,
            overridden: set[tuple[str, ...]]) -> str:
    dotted = ".".join(str(part) for part in loc)
    if any(tuple(loc[: len(keys)]) == keys for keys in overridden):
        return f"--set {dotted}: {msg}"
    line_col = _locate(text, loc) if text else None
    where = f"{source}:{line_col[0]}:{line_col[1]}" if line_col else str(source)
    return f"{where}: {dotted}: {msg}"


def _locate(text: str, loc: tuple[Any, ...]) -> tuple[int, int] | None:
    """Line and column (1-based) of the deepest key of ``loc`` found in the YAML text."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    found = (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else None
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]  # an item of a list section (tasks[1])
            found = (node.start_mark.line + 1, node.start_mark.column + 1)
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == str(part):
                found = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                node = value_node
                break
        else:
            break
    return found


def dump_recipe(recipe: Recipe, path: Path) -> None:
    """Write the fully resolved recipe (every default filled in) as YAML."""
    path.write_text(yaml.safe_dump(recipe.to_yaml_dict(), sort_keys=False), encoding="utf-8")
