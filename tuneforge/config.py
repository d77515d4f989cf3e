"""The recipe: YAML in, typed and fully validated config objects out.

This module owns the recipe's schema and its error messages. ``load_recipe(path, overrides)``
returns a :class:`Recipe` or raises :class:`~tuneforge.errors.UserError` listing every problem,
each on its own line as ``file:line:col: problem (fix)``. It does not look inside data files or
load models; :mod:`tuneforge.validate` does that.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from tuneforge.errors import UserError, did_you_mean
import tuneforge.methods  # noqa: F401  (registers every method)
from tuneforge.methods.registry import MethodConfig, method_names, method_spec

METRIC_NAMES = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc", "loss")

# Keys of the recipe whose values are file paths; relative ones are resolved against the
# directory of the recipe file (recipes stay portable), or the working directory for --set.
PATH_KEYS = (("data", "train"), ("data", "validation"), ("data", "test"),
             ("data", "augment", "forward_model"), ("data", "augment", "backward_model"),
             ("data", "augment", "wordnet_dir"))


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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

    train: Path = Field(description="Training file: CSV, TSV, JSON, JSONL or Parquet.")
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
        return self.metric != "loss"


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


class Recipe(StrictModel):
    """A whole fine-tuning job."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    model: str = Field(description="Alias (see `tuneforge models`), local folder or hub id.")
    task: Literal["classification"] = "classification"
    data: DataConfig
    method: SerializeAsAny[MethodConfig]
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_yaml_dict(self) -> dict[str, Any]:
        """The fully resolved recipe as plain YAML-able data (paths as strings)."""
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file; raise UserError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found (check the path)")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of keys (name, model, data, method, train)")
    _resolve_paths(raw, path.parent)
    file_method = raw.get("method", {}).get("name") if isinstance(raw.get("method"), dict) else None
    set_keys: set[tuple[str, ...]] = set()
    for item in overrides or []:
        set_keys.add(apply_override(raw, item))
    _drop_keys_of_replaced_method(raw, file_method, set_keys)
    return validate_recipe(raw, source=path, text=text, overridden=set_keys)


def _drop_keys_of_replaced_method(raw: dict[str, Any], file_method: str | None,
                                  set_keys: set[tuple[str, ...]]) -> None:
    """`--set method.name=X` on a recipe written for method Y: Y's own keys (r, alpha, ...) are not typos,
    so they are dropped rather than reported; keys the new method knows, and keys given with --set, stay."""
    method = raw.get("method")
    if ("method", "name") not in set_keys or not isinstance(method, dict) or file_method not in method_names():
        return
    new_name = method.get("name")
    if new_name == file_method or new_name not in method_names():
        return
    old_keys = set(method_spec(file_method).config_class.model_fields)
    new_keys = set(method_spec(new_name).config_class.model_fields)
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
    node = raw
    for part in keys[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if keys in PATH_KEYS and isinstance(value, str):
        value = str(Path(value).expanduser().resolve())
    node[keys[-1]] = value
    return keys


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for keys in PATH_KEYS:
        node: Any = raw
        for part in keys[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            value = Path(node[keys[-1]]).expanduser()
            node[keys[-1]] = str(value if value.is_absolute() else (base / value).resolve())


def validate_recipe(raw: dict[str, Any], source: Path | str = "recipe",
                    text: str | None = None, overridden: set[tuple[str, ...]] | None = None) -> Recipe:
    """Validate a raw recipe dict into a Recipe, or raise UserError with every problem."""
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
            problems.append((("method", "name"), f"missing: choose one of {', '.join(method_names())}"))
        elif name not in method_names():
            problems.append((("method", "name"), f"unknown method '{name}'{did_you_mean(str(name), method_names())}; "
                             f"choose one of {', '.join(method_names())}"))
        else:
            config_class = method_spec(name).config_class
            try:
                method = config_class.model_validate(method_raw)
            except ValidationError as exc:
                problems += [(("method",) + tuple(e["loc"]), _explain(e, config_class, e["loc"]))
                             for e in exc.errors()]
    elif method_raw is not None:
        problems.append((("method",), "must be a mapping with a `name` key"))

    recipe = None
    try:
        recipe = Recipe.model_validate({**raw, "method": method or _placeholder_method()})
    except ValidationError as exc:
        problems += [(tuple(e["loc"]), _explain(e, Recipe, e["loc"])) for e in exc.errors()
                     if not (e["loc"] and e["loc"][0] == "method")]
    if problems or recipe is None:
        raise UserError("\n".join(_format(source, text, loc, msg, overridden or set()) for loc, msg in problems))
    return recipe


def _placeholder_method() -> MethodConfig:
    return method_spec("full").config_class(name="full")


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
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
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
