"""tuneforge against a plain Hugging Face Trainer script on the same job; prints one JSON line per method.

Both sides get the same model, train/test data, epochs, batch size, max_length, learning rate, warmup,
weight decay and seed; each runs as its own process so that wall time and peak RSS are measured the same
way (os.wait4 rusage of that process). tuneforge also validates on the dev file every epoch; the
baseline does not (it would only be slower).

    python bench/vs_hf_trainer.py --data ../shared/data/sst2 --methods full,lora,freeze

`freeze` runs two variants, as in the speed targets: head only (`freeze`) and the top 2 layers
trainable (`freeze-top2`). Default epochs: 2 for full and lora, 5 for the freeze variants.

With ``--keep DIR`` each finished variant's line is also saved as ``DIR/result-<variant>.json``; running
the same command again with the same ``--keep`` prints those lines (marked ``"reused": true``) instead of
measuring them again, so a bench that takes hours can be finished over several sittings. A saved line is
reused only when every setting it was measured with (data, model, epochs, batch size, max_length, limit,
learning rate) is the same. Each line records when it was measured, the machine's load average then and the
tuneforge commit it measured. ``--remeasure tuneforge`` measures the tuneforge side again (after a change to
tuneforge) and keeps the saved Trainer side, which does not run any tuneforge code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_EPOCHS = {"full": 2, "lora": 2, "freeze": 5, "freeze-top2": 5}
# One learning rate per method, used by both sides (the usual ranges for each).
LEARNING_RATES = {"full": 1e-4, "lora": 1e-3, "freeze": 2e-3, "freeze-top2": 5e-4}
TUNEFORGE_METHOD = {
    "full": ["method.name=full"],
    "lora": ["method.name=lora", "method.r=16", "method.alpha=32", "method.dropout=0.1"],
    "freeze": ["method.name=freeze", "method.unfreeze_top_layers=0"],
    "freeze-top2": ["method.name=freeze", "method.unfreeze_top_layers=2"],
}


def run_measured(command: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``command``; return (exit code, wall seconds, peak RSS in MiB) of that process alone."""
    started = time.perf_counter()
    with log.open("w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage.ru_maxrss / 1024


HF_FIELDS = ("hf_trainer_s", "hf_accuracy", "hf_trainable_params", "hf_peak_rss_mib")


def measure_trainer(method: str, model_dir: str, train_file: Path, data: Path, epochs: int, lr: float,
                    args: argparse.Namespace, work: Path) -> dict:
    """The Trainer side of one variant: its ``HF_FIELDS``, or ``{"error": ...}``."""
    hf_result = work / f"hf-{method}.json"
    shutil.rmtree(work / f"hf-{method}", ignore_errors=True)
    code, seconds, rss = run_measured(
        [sys.executable, str(HERE / "hf_trainer_baseline.py"), "--model", model_dir, "--train", str(train_file),
         "--test", str(data / "test.jsonl"), "--method", method, "--epochs", str(epochs),
         "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--learning-rate", str(lr),
         "--out", str(hf_result), "--workdir", str(work / f"hf-{method}")], work / f"hf-{method}.log")
    if code:
        return {"error": f"hf exit code {code}"}
    hf = json.loads(hf_result.read_text())
    return {"hf_trainer_s": round(seconds, 1), "hf_accuracy": round(hf["accuracy"], 4),
            "hf_trainable_params": hf["trainable_params"], "hf_peak_rss_mib": round(rss)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with train.jsonl, dev.jsonl (validation), test.jsonl")
    parser.add_argument("--methods", default="full,lora,freeze")
    parser.add_argument("--epochs", type=int, default=None, help="default: 2 for full/lora, 5 for freeze")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="use the first N training rows")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--keep", help="keep run folders and logs here (default: a temporary folder)")
    parser.add_argument("--remeasure", choices=["tuneforge"], default=None,
                        help="with --keep: run the tuneforge side again, reuse the saved Trainer side")
    args = parser.parse_args()
    if args.remeasure and not args.keep:
        parser.error("--remeasure needs --keep (the folder with the saved Trainer measurements)")

    from tuneforge.base.models import resolve_model

    model_dir = resolve_model(args.model)
    data = Path(args.data).resolve()
    work = Path(args.keep or tempfile.mkdtemp(prefix="tuneforge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    train_file = slice_file(data / "train.jsonl", args.limit, work)
    validation_file = data / "dev.jsonl" if (data / "dev.jsonl").exists() else data / "validation.jsonl"
    methods = []
    for name in args.methods.split(","):
        methods += ["freeze", "freeze-top2"] if name == "freeze" else [name]

    recipe = work / "recipe.yaml"
    recipe.write_text(f"name: bench\nmodel: {model_dir}\ndata:\n  train: {train_file}\n  validation: {validation_file}\n"
                      f"  test: {data / 'test.jsonl'}\n  max_length: {args.max_length}\nmethod:\n  name: full\n"
                      f"train:\n  batch_size: {args.batch_size}\n  warmup_ratio: 0.1\n  weight_decay: 0.01\n"
                      f"  early_stopping: null\n  seed: 42\n")
    for method in methods:
        epochs = args.epochs or DEFAULT_EPOCHS[method]
        lr = LEARNING_RATES[method]
        settings = {"data": str(data), "model": args.model, "epochs": epochs, "learning_rate": lr,
                    "batch_size": args.batch_size, "max_length": args.max_length, "limit": args.limit}
        saved = work / f"result-{method}.json"
        previous = json.loads(saved.read_text()) if args.keep and saved.exists() else None
        if previous is not None and previous.get("settings") != settings:
            previous = None
        if previous is not None and not args.remeasure:
            print(json.dumps({**previous["line"], "reused": True}), flush=True)
            continue
        load_before = os.getloadavg()[0]
        measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        run_dir = work / f"tuneforge-{method}"
        # A sitting killed half-way leaves this variant's folders behind; `tuneforge train` never overwrites a run.
        shutil.rmtree(run_dir, ignore_errors=True)
        if previous is not None:  # --remeasure tuneforge
            hf_side = {key: previous["line"][key] for key in HF_FIELDS}
            hf_side["hf_measured_at"] = previous["line"].get("hf_measured_at", previous["line"].get("measured_at"))
        else:
            hf_side = measure_trainer(method, model_dir, train_file, data, epochs, lr, args, work)
            hf_side["hf_measured_at"] = measured_at
        tf_code, tf_seconds, tf_rss = run_measured(
            [sys.executable, "-m", "tuneforge", "train", str(recipe), "--output", str(run_dir),
             f"--set=train.epochs={epochs}", f"--set=train.learning_rate={lr}",
             *[f"--set={item}" for item in TUNEFORGE_METHOD[method]]], work / f"tuneforge-{method}.log")
        if "error" in hf_side or tf_code:
            error = f"{hf_side.get('error', 'hf: ok')}; tuneforge exit code {tf_code}"
            print(json.dumps({"method": method, "error": error, "logs": str(work)}), flush=True)
            continue
        status = json.loads((run_dir / "run.json").read_text())
        line = {
            "method": method, "epochs": epochs, "learning_rate": lr, "train_rows": status["rows"]["train"],
            "tuneforge_s": round(tf_seconds, 1), "hf_trainer_s": hf_side["hf_trainer_s"],
            "speedup": round(hf_side["hf_trainer_s"] / tf_seconds, 2),
            "tuneforge_accuracy": round(status["test"]["accuracy"], 4), "hf_accuracy": hf_side["hf_accuracy"],
            "trainable_params": status["trainable_params"], "hf_trainable_params": hf_side["hf_trainable_params"],
            "tuneforge_peak_rss_mib": round(tf_rss), "hf_peak_rss_mib": hf_side["hf_peak_rss_mib"],
            "measured_at": measured_at, "hf_measured_at": hf_side["hf_measured_at"],
            "tuneforge_commit": tuneforge_commit(), "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(line), flush=True)
        if args.keep:
            saved.write_text(json.dumps({"settings": settings, "line": line}, indent=1) + "\n")


if __name__ == "__main__":
    main()
