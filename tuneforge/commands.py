"""One function per CLI command. Each takes plain arguments, prints for a person, returns an exit code
or raises UserError; :mod:`tuneforge.cli` only parses arguments and turns errors into one line."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from tuneforge import __version__
from tuneforge.config import dump_recipe
from tuneforge.errors import UserError


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def validate_command(recipe_path: str, overrides: list[str]) -> int:
    from tuneforge.validate import validate_job

    job = validate_job(recipe_path, overrides)
    data = job.data
    print(f"{recipe_path}: valid. {len(data.label_names)} labels; train {len(data.train)}, validation "
          f"{len(data.validation)}, test {len(data.test) if data.test else 0} rows; model {job.recipe.model} "
          f"({job.model_config.model_type}); method {job.recipe.method.name}")
    for note in data.notes:
        print(f"  note: {note}")
    return 0


def train_command(recipe_path: str, overrides: list[str], output: str | None) -> int:
    from tuneforge.run import RunStatus, new_run_dir
    from tuneforge.train.loop import train
    from tuneforge.validate import validate_job

    job = validate_job(recipe_path, overrides)
    recipe, data = job.recipe, job.data
    for note in data.notes:
        log(f"note: {note}")
    run_dir = new_run_dir(output, recipe.name)
    log(f"run folder: {run_dir}")
    dump_recipe(recipe, run_dir / "config.yaml")
    (run_dir / "labels.json").write_text(json.dumps(data.label_names, indent=1, ensure_ascii=False), encoding="utf-8")
    status = RunStatus(run_dir, name=recipe.name, task=recipe.task, model=recipe.model, method=recipe.method.name,
                       tuneforge_version=__version__, rows={"train": len(data.train), "validation": len(data.validation),
                                                            "test": len(data.test) if data.test else 0})
    try:
        result = train(recipe, data, run_dir, log=log)
        status.update(trainable_params=result.trainable_params, total_params=result.total_params,
                      trainable_share=result.trainable_params / result.total_params, best_epoch=result.best_epoch,
                      stopped_early=result.stopped_early, precision=result.runtime.precision_name,
                      validation={k: v for k, v in result.best_metrics.items()})
        summary = {"validation": result.best_metrics}
        if data.test is not None:
            from tuneforge.data.batching import encode_split
            from tuneforge.evaluate import write_evaluation
            from tuneforge.inference import predict_probabilities

            encoded = encode_split(result.tokenizer, data.test, recipe.data.max_length)
            probabilities, _ = predict_probabilities(result.model, encoded, 64, result.tokenizer.pad_token_id,
                                                     result.runtime.device)
            summary["test"] = write_evaluation(run_dir / "eval" / "test", data.label_names, np.array(data.test.labels),
                                               probabilities, data.test.texts, data.test.text_pairs,
                                               data.test.source_rows)
            status.update(test={k: v for k, v in summary["test"].items() if k != "per_class"})
    except KeyboardInterrupt:
        status.finish("interrupted")
        raise
    except BaseException as exc:
        status.finish("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise
    status.finish("completed")
    print_summary(run_dir, summary, status.data["minutes"])
    return 0


def print_summary(run_dir: Path, summary: dict, minutes: float) -> None:
    keys = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc")
    print(f"\nrun {run_dir} finished in {minutes:.1f} min")
    for split, metrics in summary.items():
        values = ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if metrics.get(k) is not None)
        print(f"  {split:<10} {values} (n={metrics.get('n_examples', '?')})")


def eval_command(run_dir: str, data_file: str) -> int:
    from tuneforge.data.examples import _read_split, _to_split
    from tuneforge.evaluate import write_evaluation
    from tuneforge.predict import Predictor

    predictor = Predictor(run_dir)
    path = Path(data_file)
    frame, notes = _read_split(path, predictor.recipe.data, "eval")
    split = _to_split(frame, path, predictor.recipe.data, path.stem, {n: i for i, n in enumerate(predictor.label_names)})
    folder = Path(run_dir) / "eval" / path.stem
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder}: an evaluation of a file named '{path.stem}' already exists; it is never "
                        "overwritten: rename or remove that folder first")
    probabilities = predictor.probabilities(split.texts, split.text_pairs)
    metrics = write_evaluation(folder, predictor.label_names, np.array(split.labels), probabilities, split.texts,
                               split.text_pairs, split.source_rows)
    for note in notes:
        log(f"note: {note}")
    print_summary(folder, {path.stem: metrics}, 0.0)
    print(f"  wrote {folder}/metrics.json, predictions.csv, errors.csv, confusion_matrix.png")
    return 0


def predict_command(run_dir: str, text: str | None, text_pair: str | None, input_file: str | None,
                    output_file: str | None, top: int) -> int:
    from tuneforge.data.io import SOURCE_ROW, read_table, write_table
    from tuneforge.predict import Predictor

    if (text is None) == (input_file is None):
        raise UserError("predict: give either --text \"...\" or --input FILE --output FILE")
    if input_file is not None and output_file is None:
        raise UserError("predict: --input needs --output FILE (CSV, TSV, JSON, JSONL or Parquet)")
    if output_file is not None and Path(output_file).exists():
        raise UserError(f"{output_file}: already exists; predict never overwrites a file, choose another --output")
    predictor = Predictor(run_dir)
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


def models_command() -> int:
    from tuneforge.methods import method_names, method_spec
    from tuneforge.models import describe_aliases

    print("Model aliases (use as `model:`; a local folder or a hub id also works):")
    for alias, where, description in describe_aliases():
        print(f"  {alias:<14} {description}\n  {'':<14} -> {where}")
    print("\nMethods (`method.name`):")
    for name in method_names():
        print(f"  {name:<14} {method_spec(name).summary}")
    return 0
