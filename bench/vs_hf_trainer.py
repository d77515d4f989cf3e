"""tuneforge against Hugging Face Trainer scripts on the same job; one JSON line per method and baseline.

Baselines (bench/hf_trainer_baseline.py):

- ``plain``: the transformers text-classification example as written: every row padded to max_length, no
  evaluation during training;
- ``expert``: what a practitioner who knows the Trainer writes: dynamic padding (``DataCollatorWithPadding``),
  ``train_sampling_strategy="group_by_length"``, transformers' default optimizer (fused AdamW) and an
  evaluation on the dev file after every epoch, as tuneforge does.

Every side gets the same model, train/dev/test data, epochs, batch size, max_length, learning rate, warmup,
weight decay and seed, and runs as its own process, so that whole-command wall time and peak RSS are measured
the same way (os.wait4 rusage of that process).

    python bench/vs_hf_trainer.py --data ../shared/data/sst2 --methods full,lora,freeze --baseline both --seeds 3
    python bench/vs_hf_trainer.py --data ../shared/data/sst2 --methods full --limit 64 --test-limit 64 --epochs 1
        # a smoke run: the code paths only, the numbers mean nothing

``freeze`` runs two variants, as in the speed targets: head only (``freeze``) and the top 2 layers trainable
(``freeze-top2``). Default epochs: 2 for full and lora, 5 for the freeze variants. ``--seeds N``: seeds 42 ..
42+N-1 on every side; a line gives the mean wall time of each side and the mean and spread (population
standard deviation) of test accuracy.

Each line also has tuneforge's phase breakdown (``run.json`` → ``phases``, mean over seeds: setup, model_load,
tokenization, training, validation, saving, integrity_check, test_evaluation, report; ``other`` is the rest of
the whole command: interpreter start-up, imports, what no phase covers) and a roofline entry: the fp32 matmul
rate measured at the start of the bench, the training FLOPs of one epoch counted from the real tokens (no
padding; formula in bench/roofline.py) and the fraction of the roofline each side's training reached (tuneforge:
its ``training`` phase; the Trainer: ``train_runtime``, which includes its per-epoch evaluations in expert mode).

With ``--keep DIR`` each finished measurement (side, method, seed) is saved as ``DIR/result-<side>-<method>-
seed<seed>.json``; running the same command again with the same ``--keep`` reuses those instead of measuring
them again (lines say how many were reused), so a bench that takes hours can be finished over several
sittings. A saved measurement is reused only when every setting it was measured with (data, model, epochs,
batch size, max_length, limit, learning rate, seed) is the same. ``--remeasure tuneforge`` measures the
tuneforge side again (after a change to tuneforge) and keeps the saved Trainer sides.

Take timings with the CPU to yourself (docs/speed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import run_measured  # noqa: E402
from roofline import EncoderShape, fraction, matmul_gflops  # noqa: E402

DEFAULT_EPOCHS = {"full": 2, "lora": 2, "freeze": 5, "freeze-top2": 5}
# One learning rate per method, used by every side (the usual ranges for each).
LEARNING_RATES = {"full": 1e-4, "lora": 1e-3, "freeze": 2e-3, "freeze-top2": 5e-4}
TUNEFORGE_METHOD = {
    "full": ["method.name=full"],
    "lora": ["method.name=lora", "method.r=16", "method.alpha=32", "method.dropout=0.1"],
    "freeze": ["method.name=freeze", "method.unfreeze_top_layers=0"],
    "freeze-top2": ["method.name=freeze", "method.unfreeze_top_layers=2"],
}
BASELINES = {"plain": ["plain"], "expert": ["expert"], "both": ["plain", "expert"]}
FIRST_SEED = 42


def tuneforge_commit() -> str:
    """The commit of the tuneforge code being measured (``+changes`` when the work tree differs from it)."""
    import tuneforge

    root = Path(tuneforge.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "tuneforge"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def slice_file(source: Path, limit: int | None, folder: Path) -> Path:
    if not limit:
        return source
    target = folder / f"{source.stem}-{limit}.jsonl"
    with source.open() as reader, target.open("w") as writer:
        for index, line in enumerate(reader):
            if index >= limit:
                break
            writer.write(line)
    return target


def measure_trainer(side: str, method: str, seed: int, model_dir: str, files: dict[str, Path], epochs: int,
                    lr: float, args: argparse.Namespace, work: Path) -> dict:
    """One Trainer run (``side`` plain or expert): wall seconds, peak RSS, accuracy, train seconds."""
    name = f"{side}-{method}-seed{seed}"
    result = work / f"hf-{name}.json"
    shutil.rmtree(work / f"hf-{name}", ignore_errors=True)
    command = [sys.executable, str(HERE / "hf_trainer_baseline.py"), "--model", model_dir, "--train",
               str(files["train"]), "--test", str(files["test"]), "--method", method, "--epochs", str(epochs),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--learning-rate", str(lr),
               "--seed", str(seed), "--out", str(result), "--workdir", str(work / f"hf-{name}")]
    if side == "expert":
        command += ["--expert", "--validation", str(files["validation"])]
    code, seconds, rss = run_measured(command, work / f"hf-{name}.log")
    shutil.rmtree(work / f"hf-{name}", ignore_errors=True)
    if code:
        return {"error": f"{side} Trainer exit code {code} (log {work / f'hf-{name}.log'})"}
    hf = json.loads(result.read_text())
    return {"wall_s": round(seconds, 2), "accuracy": hf["accuracy"], "trainable_params": hf["trainable_params"],
            "train_s": round(hf["train_seconds"], 2), "peak_rss_mib": round(rss)}


def measure_tuneforge(method: str, seed: int, recipe: Path, epochs: int, lr: float, work: Path) -> dict:
    """One `tuneforge train` run: wall seconds, peak RSS, accuracy and the phases from run.json."""
    run_dir = work / f"tuneforge-{method}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # `tuneforge train` never overwrites a run
    code, seconds, rss = run_measured(
        [sys.executable, "-m", "tuneforge", "train", str(recipe), "--output", str(run_dir),
         f"--set=train.epochs={epochs}", f"--set=train.learning_rate={lr}", f"--set=train.seed={seed}",
         *[f"--set={item}" for item in TUNEFORGE_METHOD[method]]], work / f"tuneforge-{method}-seed{seed}.log")
    if code:
        return {"error": f"tuneforge exit code {code} (log {work / f'tuneforge-{method}-seed{seed}.log'})"}
    status = json.loads((run_dir / "run.json").read_text())
    phases = dict(status.get("phases") or {})
    phases["other"] = round(seconds - sum(phases.values()), 3)
    return {"wall_s": round(seconds, 2), "accuracy": status["test"]["accuracy"],
            "trainable_params": status["trainable_params"], "train_s": phases.get("training"),
            "peak_rss_mib": round(rss), "phases": phases, "train_rows": status["rows"]["train"]}


def spread(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def mean_phases(results: list[dict]) -> dict[str, float]:
    names = [name for name in results[0]["phases"]]
    return {name: round(statistics.mean(r["phases"].get(name, 0.0) for r in results), 2) for name in names}


def epoch_flops(model_dir: str, train_file: Path, max_length: int, method: str) -> float:
    """Training FLOPs of one epoch over ``train_file`` (real tokens; bench/roofline.py)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [json.loads(line)["text"] for line in train_file.open(encoding="utf-8") if line.strip()]
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    shape = EncoderShape.of(AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2))
    return sum(shape.training(n, method) for n in lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with train.jsonl, dev.jsonl (validation), test.jsonl")
    parser.add_argument("--methods", default="full,lora,freeze")
    parser.add_argument("--baseline", choices=list(BASELINES), default="both")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per side (42, 43, ...); default 1")
    parser.add_argument("--epochs", type=int, default=None, help="default: 2 for full/lora, 5 for freeze")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="use the first N training rows")
    parser.add_argument("--test-limit", type=int, default=None, help="use the first N test rows (smoke runs)")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--keep", help="keep run folders, logs and measurements here (default: a temporary folder)")
    parser.add_argument("--remeasure", choices=["tuneforge"], default=None,
                        help="with --keep: run the tuneforge side again, reuse the saved Trainer sides")
    args = parser.parse_args()
    if args.remeasure and not args.keep:
        parser.error("--remeasure needs --keep (the folder with the saved Trainer measurements)")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    import torch

    peak = matmul_gflops()
    print(json.dumps({"bench": "roofline", "matmul_fp32_gflops": round(peak, 1), "threads": torch.get_num_threads(),
                      "load_average": round(os.getloadavg()[0], 2)}), flush=True)

    from tuneforge.base.models import resolve_model

    model_dir = resolve_model(args.model)
    data = Path(args.data).resolve()
    work = Path(args.keep or tempfile.mkdtemp(prefix="tuneforge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    validation = data / "dev.jsonl" if (data / "dev.jsonl").exists() else data / "validation.jsonl"
    files = {"train": slice_file(data / "train.jsonl", args.limit, work), "validation": validation,
             "test": slice_file(data / "test.jsonl", args.test_limit, work)}
    methods = []
    for name in args.methods.split(","):
        methods += ["freeze", "freeze-top2"] if name == "freeze" else [name]
    unknown = [m for m in methods if m not in TUNEFORGE_METHOD]
    if unknown:
        parser.error(f"unknown methods {', '.join(unknown)}; choose from full, lora, freeze")

    recipe = work / "recipe.yaml"
    recipe.write_text(f"name: bench\nmodel: {model_dir}\ndata:\n  train: {files['train']}\n  validation: {validation}\n"
                      f"  test: {files['test']}\n  max_length: {args.max_length}\nmethod:\n  name: full\n"
                      f"train:\n  batch_size: {args.batch_size}\n  warmup_ratio: 0.1\n  weight_decay: 0.01\n"
                      f"  early_stopping: null\n  seed: {FIRST_SEED}\n")
    sides = ["tuneforge", *BASELINES[args.baseline]]
    for method in methods:
        epochs = args.epochs or DEFAULT_EPOCHS[method]
        lr = LEARNING_RATES[method]
        results: dict[str, list[dict]] = {side: [] for side in sides}
        reused = 0
        measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        load_before = os.getloadavg()[0]
        for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):
            settings = {"data": str(data), "model": args.model, "epochs": epochs, "learning_rate": lr,
                        "batch_size": args.batch_size, "max_length": args.max_length, "limit": args.limit,
                        "test_limit": args.test_limit, "seed": seed}
            for side in sides:
                saved = work / f"result-{side}-{method}-seed{seed}.json"
                previous = json.loads(saved.read_text()) if args.keep and saved.exists() else None
                if previous is not None and previous.get("settings") == settings and not (
                        side == "tuneforge" and args.remeasure):
                    results[side].append(previous["result"])
                    reused += 1
                    continue
                if side == "tuneforge":
                    result = measure_tuneforge(method, seed, recipe, epochs, lr, work)
                    result["commit"] = tuneforge_commit()
                else:
                    result = measure_trainer(side, method, seed, model_dir, files, epochs, lr, args, work)
                result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                results[side].append(result)
                if args.keep and "error" not in result:
                    saved.write_text(json.dumps({"settings": settings, "result": result}, indent=1) + "\n")
        errors = [r["error"] for side in sides for r in results[side] if "error" in r]
        if errors:
            print(json.dumps({"bench": "vs_hf_trainer", "method": method, "error": "; ".join(errors),
                              "logs": str(work)}), flush=True)
            continue
        tuneforge = results["tuneforge"]
        flops = epoch_flops(model_dir, files["train"], args.max_length, method) * epochs
        tf_wall = statistics.mean(r["wall_s"] for r in tuneforge)
        tf_accuracy = [r["accuracy"] for r in tuneforge]
        tf_train = statistics.mean(r["train_s"] for r in tuneforge)
        for baseline in BASELINES[args.baseline]:
            hf = results[baseline]
            hf_wall = statistics.mean(r["wall_s"] for r in hf)
            hf_accuracy = [r["accuracy"] for r in hf]
            line = {
                "bench": "vs_hf_trainer", "method": method, "baseline": baseline, "epochs": epochs,
                "learning_rate": lr, "train_rows": tuneforge[0]["train_rows"], "seeds": args.seeds,
                "tuneforge_s": round(tf_wall, 1), "hf_s": round(hf_wall, 1), "speedup": round(hf_wall / tf_wall, 2),
                "tuneforge_accuracy_mean": round(statistics.mean(tf_accuracy), 4),
                "tuneforge_accuracy_std": round(spread(tf_accuracy), 4),
                "hf_accuracy_mean": round(statistics.mean(hf_accuracy), 4),
                "hf_accuracy_std": round(spread(hf_accuracy), 4),
                "accuracy_gap_points": round(100 * (statistics.mean(tf_accuracy) - statistics.mean(hf_accuracy)), 2),
                "tuneforge_train_s": round(tf_train, 1),
                "hf_train_s": round(statistics.mean(r["train_s"] for r in hf), 1),
                "tuneforge_phases": mean_phases(tuneforge),
                "roofline": {"matmul_fp32_gflops": round(peak, 1), "train_gflop": round(flops / 1e9, 1),
                             "tuneforge": fraction(flops, tf_train, peak),
                             "hf": fraction(flops, statistics.mean(r["train_s"] for r in hf), peak)},
                "trainable_params": tuneforge[0]["trainable_params"], "hf_trainable_params": hf[0]["trainable_params"],
                "tuneforge_peak_rss_mib": max(r["peak_rss_mib"] for r in tuneforge),
                "hf_peak_rss_mib": max(r["peak_rss_mib"] for r in hf),
                "tuneforge_wall_s_per_seed": [r["wall_s"] for r in tuneforge],
                "hf_wall_s_per_seed": [r["wall_s"] for r in hf],
                "measured_at": measured_at, "tuneforge_commit": tuneforge[-1].get("commit", "unknown"),
                "reused_measurements": reused,
                "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
