"""Shared fixtures: a tiny random BERT built from a config (no downloads) and small synthetic data sets
that such a model can learn in seconds."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPOSITORY / "examples" / "data"
# The CI machine's data folder beside the repository. A clone has no such folder: tests reach it only through
# the `shared_data` fixture, which skips without it (tests/test_bare_clone.py checks both rules).
SHARED_DATA = Path(os.environ.get("TUNEFORGE_SHARED_DATA") or REPOSITORY.parent / "shared" / "data")
# .ci/run sets this, so that on the CI machine a missing data folder fails instead of skipping quietly.
REQUIRE_SHARED_DATA = "TUNEFORGE_REQUIRE_SHARED_DATA"

POSITIVE = ["good", "great", "lovely", "superb", "fine", "happy", "brilliant", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dreadful", "sad", "boring", "terrible", "ugly"]
FILLER = ["the", "film", "was", "really", "quite", "a", "plot", "actor", "story", "and", "it", "very", "show"]


def make_tiny_bert(folder: Path, layers: int = 3, hidden: int = 32) -> Path:
    """Save a randomly initialised BERT (and a word-level vocab covering the synthetic data) to ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, "?", ".", "card", "lost"]
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(vocab)})
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def synthetic_rows(count: int, seed: int, labels: tuple[str, str] = ("negative", "positive")) -> list[dict]:
    """Sentences whose label is given by one sentiment word among fillers: learnable, not trivial to memorise."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        words = rng.sample(FILLER, rng.randint(2, 8))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
        rows.append({"text": " ".join(words), "label": labels[int(positive)]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def shared_data_folder(name: str) -> Path:
    """``../shared/data/<name>``, or skip the calling test with the reason when it is not there."""
    folder = SHARED_DATA / name
    if folder.is_dir():
        return folder
    if os.environ.get(REQUIRE_SHARED_DATA):
        pytest.fail(f"{folder} is missing and {REQUIRE_SHARED_DATA} is set (.ci/run expects ../shared/data)")
    pytest.skip(f"needs ../shared/data/{name} (the CI machine's data folder beside the repository; not in a clone)")


@pytest.fixture(scope="session")
def shared_data():
    """``shared_data("sst2")`` → the folder, or a skip with the reason. Tests marked by it get the
    ``needs_shared_data`` marker (pytest_collection_modifyitems below)."""
    return shared_data_folder


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_shared_data)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Keep the tokenization cache of test runs out of the user's ~/.cache."""
    import os

    previous = os.environ.get("TUNEFORGE_CACHE_DIR")
    os.environ["TUNEFORGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("tuneforge-cache"))
    yield
    if previous is None:
        os.environ.pop("TUNEFORGE_CACHE_DIR", None)
    else:
        os.environ["TUNEFORGE_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def tiny_recipe_text(model: Path | str, name: str = "tiny", task: str | None = None, data_keys: str = "",
                     extra: str = "") -> str:
    """The recipe of the tiny-model tests: full fine-tuning for 6 epochs of batches of 16 at lr 3e-3 (the tiny
    BERT learns the synthetic rows in that), ``train.jsonl`` / ``test.jsonl`` beside it. ``data_keys``: more
    ``data:`` lines (indented two spaces); ``extra``: more top-level sections."""
    task_line = f"task: {task}\n" if task else ""
    return f"""name: {name}
model: {model}
{task_line}data:
  train: train.jsonl
  test: test.jsonl
{data_keys}  max_length: 32
method:
  name: full
train:
  epochs: 6
  batch_size: 16
  learning_rate: 3.0e-3
  warmup_ratio: 0.0
  early_stopping: null
{extra}"""


def write_tiny_job(folder: Path, model: Path) -> Path:
    """Synthetic sentiment train (240 rows) and test (80) files and the tiny recipe in ``folder``; returns the
    recipe path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", synthetic_rows(240, seed=1))
    write_jsonl(folder / "test.jsonl", synthetic_rows(80, seed=2))
    recipe = folder / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(model), encoding="utf-8")
    return recipe


@pytest.fixture()
def tiny_job(tmp_path, tiny_model):
    """A recipe file on the tiny model with synthetic train/test files; returns the recipe path."""
    return write_tiny_job(tmp_path, tiny_model)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    import contextlib
    import io

    from tuneforge.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()
