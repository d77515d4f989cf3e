"""The ``tuneforge`` command line: parse arguments, call one function of :mod:`tuneforge.commands`,
and turn a :class:`UserError` into one line on stderr and exit code 1 (2 for usage errors)."""

from __future__ import annotations

import argparse
import os
import sys

from tuneforge import __version__
from tuneforge.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description="One YAML recipe in, one run folder out.")
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_overrides(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("recipe", help="recipe YAML file")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a recipe key, e.g. --set train.epochs=2 (value parsed as YAML; repeatable)")

    train = commands.add_parser("train", help="validate, train, evaluate; write a run folder")
    with_overrides(train)
    train.add_argument("--output", help="run folder (must not exist or be empty); default runs/<name>-<timestamp>/")

    validate = commands.add_parser("validate", help="check a recipe, its data and model without training")
    with_overrides(validate)

    evaluate = commands.add_parser("eval", help="evaluate a run on a labelled file; writes RUN/eval/<stem>/")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", required=True, help="labelled file with the run's text/label columns")

    predict = commands.add_parser("predict", help="predict labels with a trained run")
    predict.add_argument("run_dir")
    predict.add_argument("--text", help="one text to classify")
    predict.add_argument("--text-pair", help="second text, for sentence-pair runs")
    predict.add_argument("--input", help="CSV/TSV/JSON/JSONL/Parquet file with the run's text column")
    predict.add_argument("--output", help="where to write the rows plus predicted_label and confidence")
    predict.add_argument("--top", type=int, default=5, help="with --text: how many label probabilities to print")

    commands.add_parser("models", help="list model aliases and methods")
    return parser


def quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, deprecation notices) out of the user's output."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tuneforge`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    args = build_parser().parse_args(argv)
    from tuneforge import commands

    try:
        if args.command == "train":
            return commands.train_command(args.recipe, args.overrides, args.output)
        if args.command == "validate":
            return commands.validate_command(args.recipe, args.overrides)
        if args.command == "eval":
            return commands.eval_command(args.run_dir, args.data)
        if args.command == "predict":
            return commands.predict_command(args.run_dir, args.text, args.text_pair, args.input, args.output, args.top)
        if args.command == "models":
            return commands.models_command()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
