"""The ``tuneforge`` command line: parse arguments, call one function of :mod:`tuneforge.cli.commands`,
and turn a :class:`UserError` into one line on stderr and exit code 1 (2 for usage errors)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from tuneforge import __version__
from tuneforge.base.errors import UserError, disk_full, disk_full_message
from tuneforge.base.quiet import quiet_libraries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description="One YAML recipe in, one run folder out.")
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_overrides(sub: argparse.ArgumentParser, recipe_optional: bool = False) -> None:
        sub.add_argument("recipe", nargs="?" if recipe_optional else None, help="recipe YAML file")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a recipe key, e.g. --set train.epochs=2 (value parsed as YAML; repeatable)")

    def no_verify(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--no-verify", action="store_true",
                         help="load run/export files without checking their sha256 against artifacts.json "
                              "(docs/trust.md)")

    def with_backend(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                         help="torch (default): the run's PyTorch model; onnx: ONNX Runtime on the run's export "
                              "(RUN_DIR/export/onnx, made by `tuneforge export RUN_DIR --format onnx`; docs/speed.md)")

    train = commands.add_parser("train", help="validate, train, evaluate; write a run folder")
    with_overrides(train, recipe_optional=True)
    train.add_argument("--output", help="run folder (must not exist or be empty); default runs/<name>-<timestamp>/")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its newest intact "
                                                           "checkpoint (no RECIPE: the run's config.yaml is used)")
    train.add_argument("--from", dest="from_run", metavar="RUN_DIR",
                       help="continual fine-tuning: start from this finished run's model, keep its labels and add "
                            "the new ones; the recipe's continual section says how to keep the old task "
                            "(docs/continual.md)")
    train.add_argument("--allow-pickle", action="store_true",
                       help="with --resume: accept checkpoint folders that also hold pickle files (never loaded)")
    no_verify(train)

    validate = commands.add_parser("validate", help="check a recipe, its data and model without training")
    with_overrides(validate)

    evaluate = commands.add_parser("eval", help="evaluate a run on a labelled file; writes RUN/eval/<stem>/")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", required=True, help="labelled file with the run's text/label columns")
    with_backend(evaluate)
    no_verify(evaluate)

    predict = commands.add_parser("predict", help="predict labels with a trained run")
    predict.add_argument("run_dir")
    predict.add_argument("--text", help="one text to classify")
    predict.add_argument("--text-pair", help="second text, for sentence-pair runs")
    predict.add_argument("--input", help="CSV/TSV/JSON/JSONL/Parquet file with the run's text column")
    predict.add_argument("--output", help="where to write the rows plus predicted_label and confidence")
    predict.add_argument("--top", type=int, default=5, help="with --text: how many label probabilities to print")
    with_backend(predict)
    no_verify(predict)

    generate = commands.add_parser("generate", help="generate text with a trained sft / causal-lm run "
                                                    "(docs/generative.md)")
    generate.add_argument("run_dir")
    generate.add_argument("--prompt", help="one prompt (an instruction; the run's chat template is applied)")
    generate.add_argument("--input", help="CSV/TSV/JSON/JSONL/Parquet file with the run's instruction (and input) "
                                          "columns, a messages column, or a prompt column")
    generate.add_argument("--output", help="where to write the rows plus a 'generated' column")
    generate.add_argument("--max-new-tokens", type=int, help="default: the recipe's generative.generation.max_new_tokens")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sampled")
    generate.add_argument("--top-p", type=float, help="with --temperature: nucleus mass (default: the recipe's)")
    no_verify(generate)

    explain = commands.add_parser("explain", help="which tokens drove a text classifier's prediction "
                                                  "(integrated gradients; docs/explain.md)")
    explain.add_argument("run_dir")
    explain.add_argument("--text", help="one text to explain")
    explain.add_argument("--text-pair", help="with --text, for sentence-pair runs: the second text")
    explain.add_argument("--label", help="attribute toward this label (default: the predicted one)")
    explain.add_argument("--input", help="CSV/TSV/JSON/JSONL/Parquet file with the run's text column")
    explain.add_argument("--output", help="with --input: FILE.jsonl (one explanation per line) or FILE.html "
                                          "(self-contained page, tokens coloured)")
    explain.add_argument("--steps", type=int, default=50, help="integration steps (default 50)")
    no_verify(explain)

    commands.add_parser("models", help="list model aliases and methods")

    report = commands.add_parser("report", help="(re)write RUN_DIR/report.html, one self-contained HTML file")
    report.add_argument("run_dir")

    data = commands.add_parser("data", help="inspect, clean and find label noise in data files (docs/data.md)")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    inspect = data_commands.add_parser("inspect", help="labels, lengths, empty rows, duplicates, conflicts, leakage")
    inspect.add_argument("file", help="labelled CSV/TSV/JSON/JSONL/Parquet file")
    inspect.add_argument("--text-column", help="default: text (or the recipe's)")
    inspect.add_argument("--text-pair-column", help="second text of sentence-pair data")
    inspect.add_argument("--label-column", help="default: label (or the recipe's)")
    inspect.add_argument("--against", metavar="OTHER_FILE", help="a test file: count its rows that also appear in FILE")
    inspect.add_argument("--recipe", help="take columns, model and max_length from this recipe")
    inspect.add_argument("--model", help="tokenizer for lengths: alias, folder or hub id (default minilm; 'none': skip)")
    inspect.add_argument("--max-length", type=int, help="count rows longer than this many tokens (default 128)")
    inspect.add_argument("--output", metavar="DIR", help="also write DIR/data_report.json and DIR/data_report.html")

    clean = data_commands.add_parser("clean", help="write a cleaned copy and a log of every change")
    clean.add_argument("file")
    clean.add_argument("--output", required=True, help="the cleaned file (never the input; format from extension)")
    clean.add_argument("--text-column", default="text")
    clean.add_argument("--text-pair-column")
    clean.add_argument("--label-column", default="label")
    clean.add_argument("--dedupe", nargs="?", const="exact", choices=["exact", "near"],
                       help="remove later copies of a text with the same label (exact, the default, or near)")
    clean.add_argument("--resolve-conflicts", choices=["majority", "drop"],
                       help="same text, different labels: relabel to the majority or drop the rows")
    clean.add_argument("--drop-empty", action="store_true", help="remove empty or whitespace-only texts")
    clean.add_argument("--log", dest="log_file", help="change log CSV (default OUTPUT_STEM.clean_log.csv)")

    noise = data_commands.add_parser("noise", help="rank rows whose label looks wrong (out-of-fold, confident learning)")
    with_overrides(noise)
    noise.add_argument("--folds", type=int, default=5, help="k of the k-fold (default 5)")
    noise.add_argument("--output", help="CSV of the flagged rows (default <recipe name>.label_issues.csv)")
    noise.add_argument("--top", type=int, default=10, help="how many flagged rows to print")

    export = commands.add_parser("export", help="export a run to ONNX/TorchScript/safetensors, check parity, "
                                                "measure (docs/export.md)")
    export.add_argument("run_dir")
    export.add_argument("--format", dest="export_format", required=True, choices=["onnx", "torchscript", "safetensors"])
    export.add_argument("--quantize", choices=["int8"], help="dynamic INT8 (onnx, torchscript)")
    export.add_argument("--output", metavar="DIR", help="export folder (must not exist or be empty); "
                                                        "default RUN_DIR/export/<format>[-int8]/")
    export.add_argument("--data", help="rows for the parity check (default: the run's validation split)")
    export.add_argument("--min-agreement", type=float,
                        help="strict gate: fail when predictions agree with the run's model on fewer of all parity "
                             "rows (default: 0.99 for fp32; INT8 is judged on the rows where fp32 is confident and "
                             "on validation accuracy, docs/export.md)")
    export.add_argument("--no-benchmark", action="store_true", help="skip size/latency/accuracy measurements")
    no_verify(export)

    serve = commands.add_parser("serve", help="HTTP server: POST /predict, GET /health (docs/export.md)")
    serve.add_argument("path", metavar="RUN_DIR|EXPORT_DIR")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-texts", type=int, default=64, help="texts per request (default 64)")
    serve.add_argument("--max-text-chars", type=int, default=5000, help="characters per text (default 5000)")
    serve.add_argument("--max-batch", type=int, default=64, help="texts per forward pass across requests (default 64)")
    serve.add_argument("--threads", type=int, help="CPU threads for the model (default: PyTorch's, the physical cores)")
    no_verify(serve)

    compare = commands.add_parser("compare", help="train several methods under one budget; write a comparison "
                                                  "table and plot (docs/compare-and-plan.md)")
    with_overrides(compare)
    compare.add_argument("--methods", help="comma-separated methods (default full,freeze,adapter,lora,prefix,prompt: "
                                           "those of them the recipe's task supports)")
    compare.add_argument("--budget-minutes", type=float, help="wall-clock training budget per method")
    compare.add_argument("--learning-rate", dest="learning_rates", choices=["auto", "recipe"], default="auto",
                         help="auto: each method's default LR except the recipe's own method; recipe: the recipe's LR "
                              "for all")
    compare.add_argument("--output", help="compare folder (must not exist or be empty); "
                                          "default runs/<name>-compare-<timestamp>/")

    plan = commands.add_parser("plan", help="estimate memory and time of every method without training; "
                                            "recommend one (docs/compare-and-plan.md)")
    with_overrides(plan)
    plan.add_argument("--memory-gb", type=float, help="memory available (RAM on CPU, GPU memory with --gpu)")
    plan.add_argument("--minutes", type=float, help="time available for training")
    plan.add_argument("--gpu", help="plan for this GPU (t4, l4, a10g, a100, h100, ...): its memory, FLOP-based times")
    plan.add_argument("--methods", help="comma-separated methods to estimate (default: all)")
    plan.add_argument("--json", dest="json_output", metavar="FILE", help="also write the plan as JSON")

    auto = commands.add_parser("auto", help="choose the method and settings within a time budget and train the "
                                            "winner into a normal run folder (docs/auto.md)")
    with_overrides(auto)
    auto.add_argument("--minutes", type=float, required=True, help="the whole command's time, model loading included")
    auto.add_argument("--memory-gb", type=float, help="memory available: methods that need more are left out")
    auto.add_argument("--metric", help="validation metric to optimise (default: the task's, f1_macro)")
    auto.add_argument("--output", help="the run folder (default runs/<name>-auto-<time>/); rerunning into the folder "
                                       "of an interrupted auto continues its search")

    search = commands.add_parser("search", help="hyper-parameter search over recipe keys with Optuna (docs/search.md)")
    with_overrides(search)
    search.add_argument("--space", required=True, help="YAML file: dotted recipe key -> distribution "
                                                        "(loguniform, uniform, int, choice)")
    search.add_argument("--trials", type=int, required=True,
                        help="completed or pruned trials the study should hold; a rerun runs only the missing ones")
    search.add_argument("--storage", help="Optuna RDB URL (default sqlite:///OUTPUT/study.db); several machines may "
                                          "share one study through the same URL")
    search.add_argument("--jobs", type=int, default=1, help="parallel trials (worker processes sharing the storage)")
    search.add_argument("--heartbeat", type=int, default=20, metavar="SECONDS",
                        help="workers' heartbeat; a trial silent for 3 heartbeats (its worker died) is marked failed "
                             "and retried once with the same values (default 20)")
    search.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                        help="stop poor trials early on the per-epoch validation metric (default median)")
    search.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="default tpe")
    search.add_argument("--metric", help="validation metric to optimise (default: train.early_stopping.metric)")
    search.add_argument("--study-name", help="default: the recipe's name")
    search.add_argument("--output", help="search folder (default runs/<study name>-search/); rerunning into it "
                                         "continues its study")

    doctor = commands.add_parser("doctor", help="check this machine (and a recipe, with a preflight of a few steps) "
                                                "before training, or a finished run folder (docs/trust.md)")
    doctor.add_argument("recipe", nargs="?", help="recipe YAML file: also validate it, flag known-bad combinations "
                                                  "and run the preflight; or a run folder: check its integrity record "
                                                  "(artifacts.json) and re-hash its model files")
    doctor.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set train.precision=bf16 (repeatable)")
    doctor.add_argument("--output", help="where runs will be written, for the free-disk check (default runs/)")
    doctor.add_argument("--steps", type=int, default=10, help="optimizer steps of the preflight (default 10)")
    doctor.add_argument("--json", dest="json_output", metavar="FILE", help="also write every check as JSON")

    runs = commands.add_parser("runs", help="list the runs in a folder: task, model, method, main metric, minutes, "
                                            "status (docs/trust.md)")
    runs.add_argument("folder", nargs="?", default="runs", help="folder holding run folders (default runs/)")
    runs.add_argument("--sort", default="started", help="started (default), name, task, model, method, value, "
                                                        "minutes or status")
    runs.add_argument("--desc", action="store_true", help="sort descending (e.g. --sort value --desc: best first)")
    runs.add_argument("--json", dest="json_output", action="store_true", help="print JSON instead of a table")

    ui = commands.add_parser("ui", help="local web dashboard: runs live, compare, launch/stop/resume (docs/ui.md)")
    ui.add_argument("folder", nargs="?", default="runs", help="folder holding run folders (default runs/)")
    ui.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only); any other host "
                                                        "requires the token printed at start")
    ui.add_argument("--port", type=int, default=7860, help="default 7860")
    ui.add_argument("--recipes", dest="recipe_dirs", action="append", metavar="DIR",
                    help="folder of recipe files (and their data) the launch page may use (repeatable; default .)")
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Call the function of :mod:`tuneforge.cli.commands` that ``args.command`` names, with its arguments."""
    # Imported here, not at the top: `tuneforge --help` and usage errors answer without loading torch,
    # transformers and every application (the commands module imports them all).
    started = time.perf_counter()  # `auto --minutes` counts these imports too
    from tuneforge.cli import commands

    dispatch = {
        "train": lambda: commands.train_command(args.recipe, args.overrides, args.output, args.resume,
                                                args.allow_pickle, args.from_run),
        "validate": lambda: commands.validate_command(args.recipe, args.overrides),
        "eval": lambda: commands.eval_command(args.run_dir, args.data, args.backend),
        "predict": lambda: commands.predict_command(args.run_dir, args.text, args.text_pair, args.input, args.output,
                                                    args.top, args.backend),
        "generate": lambda: commands.generate_command(args.run_dir, args.prompt, args.input, args.output,
                                                      args.max_new_tokens, args.temperature, args.top_p),
        "explain": lambda: commands.explain_command(args.run_dir, args.text, args.text_pair, args.label, args.input,
                                                    args.output, args.steps),
        "models": commands.models_command,
        "report": lambda: commands.report_command(args.run_dir),
        "data inspect": lambda: commands.data_inspect_command(
            args.file, args.text_column, args.text_pair_column, args.label_column, args.against, args.recipe,
            args.model, args.max_length, args.output),
        "data clean": lambda: commands.data_clean_command(
            args.file, args.output, args.text_column, args.text_pair_column, args.label_column, args.dedupe,
            args.resolve_conflicts, args.drop_empty, args.log_file),
        "data noise": lambda: commands.data_noise_command(args.recipe, args.overrides, args.folds, args.output,
                                                          args.top),
        "export": lambda: commands.export_command(args.run_dir, args.export_format, args.quantize, args.output,
                                                  args.data, args.min_agreement, not args.no_benchmark),
        "serve": lambda: commands.serve_command(args.path, args.host, args.port, args.max_texts, args.max_text_chars,
                                                args.max_batch, args.threads),
        "compare": lambda: commands.compare_command(args.recipe, args.methods, args.overrides, args.output,
                                                    args.budget_minutes, args.learning_rates),
        "auto": lambda: commands.auto_command(args.recipe, args.overrides, args.minutes, args.memory_gb, args.metric,
                                              args.output, started),
        "search": lambda: commands.search_command(args.recipe, args.space, args.trials, args.storage, args.jobs,
                                                  args.pruner, args.sampler, args.metric, args.study_name,
                                                  args.output, args.overrides, heartbeat_s=args.heartbeat),
        "doctor": lambda: commands.doctor_command(args.recipe, args.overrides, args.output, args.steps,
                                                  args.json_output),
        "runs": lambda: commands.runs_command(args.folder, args.sort, args.desc, args.json_output),
        "ui": lambda: commands.ui_command(args.folder, args.recipe_dirs or ["."], args.host, args.port),
        "plan": lambda: commands.plan_command(args.recipe, args.overrides, args.memory_gb, args.minutes, args.gpu,
                                              args.methods, args.json_output),
    }
    name = f"data {args.data_command}" if args.command == "data" else args.command
    with commands.skip_verification(getattr(args, "no_verify", False)):
        return dispatch[name]()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tuneforge`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - only a full disk is the user's to fix; anything else is a bug
        if not disk_full(error):
            raise
        print(f"error: {disk_full_message(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
