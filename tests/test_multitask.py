"""task: multitask — one shared encoder, one head per task: batch sampling across tasks, the weighted loss,
training + per-task validation, save -> load -> predict parity for every head, and the recipe's checks."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli, synthetic_rows, write_jsonl
from tuneforge.core.data.batching import EncodedSplit
from tuneforge.core.data.multitask import MultiTaskEncoded, epoch_batches, temperature_probabilities, temperature_quotas

TOPICS = ("film", "plot", "actor")


def encoded_of_sizes(sizes: list[int]) -> MultiTaskEncoded:
    parts = [EncodedSplit(input_ids=[[1] * (1 + i % 7) for i in range(size)], token_type_ids=None, labels=[0] * size)
             for size in sizes]
    return MultiTaskEncoded(parts, [1] * len(sizes), pad_token_id=0)


def batch_tasks(encoded: MultiTaskEncoded, batches: list[list[int]]) -> list[int]:
    tasks = []
    for batch in batches:
        owners = {encoded.task_of[i] for i in batch}
        assert len(owners) == 1, "a batch mixes tasks"
        tasks.append(owners.pop())
    return tasks


@pytest.mark.parametrize("group_by_length", [True, False])
def test_proportional_and_round_robin_see_each_example_once_per_epoch(group_by_length):
    encoded = encoded_of_sizes([100, 20, 45])
    for sampling in ("proportional", "round_robin"):
        batches = epoch_batches(encoded, 10, random.Random(0), group_by_length, sampling, 2.0)
        seen = Counter(i for batch in batches for i in batch)
        assert sorted(seen) == list(range(len(encoded))) and set(seen.values()) == {1}, sampling
        counts = Counter(batch_tasks(encoded, batches))
        assert counts == {0: 10, 1: 2, 2: 5}, sampling  # ceil(n_i / batch_size) batches per task
        assert all(len(batch) <= 10 for batch in batches)
    order = batch_tasks(encoded, epoch_batches(encoded, 10, random.Random(0), group_by_length, "round_robin", 2.0))
    # tasks take turns; a finished task drops out
    assert order == [0, 1, 2, 0, 1, 2, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0]
    # proportional interleaves the tasks (not all of task 0 first), reproducibly for a seed
    first = batch_tasks(encoded, epoch_batches(encoded, 10, random.Random(3), group_by_length, "proportional", 2.0))
    again = batch_tasks(encoded, epoch_batches(encoded, 10, random.Random(3), group_by_length, "proportional", 2.0))
    assert first == again and first != sorted(first)


def test_temperature_sampling_gives_n_to_the_one_over_t_proportions():
    sizes = [1000, 100, 10]
    encoded = encoded_of_sizes(sizes)
    total = sum(math.ceil(n / 10) for n in sizes)  # 100 + 10 + 1 batches, as proportional would have
    for temperature in (1.0, 2.0, 5.0):
        p = np.array(sizes, dtype=float) ** (1 / temperature)
        p /= p.sum()
        assert np.allclose(temperature_probabilities(sizes, temperature), p)
        batches = epoch_batches(encoded, 10, random.Random(1), True, "temperature", temperature)
        counts = Counter(batch_tasks(encoded, batches))
        assert sum(counts.values()) == total
        quotas = temperature_quotas(sizes, total, temperature)
        assert [counts[t] for t in range(3)] == quotas
        assert all(abs(q - total * share) <= 1 for q, share in zip(quotas, p))  # rounding only
    # T=1 is proportional; a large T is near uniform, so the 10-row task repeats its rows within the epoch
    assert temperature_quotas(sizes, total, 1.0) == [100, 10, 1]
    uniform = temperature_quotas(sizes, total, 1e6)
    assert max(uniform) - min(uniform) <= 1
    batches = epoch_batches(encoded, 10, random.Random(1), True, "temperature", 1e6)
    small = Counter(i for batch in batches for i in batch if encoded.task_of[i] == 2)
    assert set(small) == set(range(1100, 1110)) and min(small.values()) >= uniform[2] - 1


def test_weighted_loss_equals_the_formula():
    from tuneforge.core.tasks.multitask import MultiTaskLoss
    from tuneforge.core.tasks.multitask_model import HeadSpec

    heads = [HeadSpec("sentiment", "single_label", ["neg", "pos", "mid"], weight=0.7),
             HeadSpec("topics", "multi_label", ["a", "b", "c", "d"], weight=2.5)]
    loss = MultiTaskLoss(heads)
    generator = np.random.default_rng(0)
    logits = generator.normal(size=(5, 3))
    gold = np.array([0, 2, 1, 1, 0])
    labels = torch.tensor(np.column_stack([np.zeros(5), gold]), dtype=torch.long)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = 0.7 * -log_softmax[np.arange(5), gold].mean()
    assert float(loss(torch.tensor(logits), labels)) == pytest.approx(expected, abs=1e-9)

    logits = generator.normal(size=(6, 4))
    hot = generator.integers(0, 2, size=(6, 4))
    labels = torch.tensor(np.column_stack([np.ones(6), hot]), dtype=torch.long)
    probability = 1 / (1 + np.exp(-logits))
    bce = -(hot * np.log(probability) + (1 - hot) * np.log(1 - probability)).mean()
    assert float(loss(torch.tensor(logits), labels)) == pytest.approx(2.5 * bce, abs=1e-9)
    assert float(MultiTaskLoss(heads, weighted=False)(torch.tensor(logits), labels)) == pytest.approx(bce, abs=1e-9)
    mixed = torch.tensor([[0, 1, -100, -100, -100], [1, 0, 1, 0, 1]])
    with pytest.raises(ValueError, match="one task"):
        loss(torch.zeros(2, 4), mixed)


def topic_rows(count: int, seed: int) -> list[dict]:
    """Sentiment rows with a second and third labelling: which topic words occur (multi-label), and a length class."""
    rows = synthetic_rows(count, seed)
    for row in rows:
        words = row["text"].split()
        row["topics"] = [topic for topic in TOPICS if topic in words]
        row["size"] = "long" if len(words) >= 6 else "short"
    return rows


def write_multitask_job(folder: Path, model: Path, method: str = "full", extra: str = "") -> Path:
    write_jsonl(folder / "sentiment.jsonl", synthetic_rows(160, seed=1))
    write_jsonl(folder / "sentiment-test.jsonl", synthetic_rows(60, seed=2))
    write_jsonl(folder / "shared.jsonl", topic_rows(200, seed=3))
    write_jsonl(folder / "shared-test.jsonl", topic_rows(60, seed=4))
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""name: tiny-mt
model: {model}
task: multitask
data:
  train: shared.jsonl
  test: shared-test.jsonl
  max_length: 32
tasks:
  - name: sentiment
    train: sentiment.jsonl
    test: sentiment-test.jsonl
    weight: 1.0
  - name: topics
    type: multi_label
    label_column: topics
    weight: 2.0
  - name: size
    label_column: size
    weight: 0.5
    metric: f1_macro
multitask:
  sampling: temperature
  temperature: 2.0
method:
  name: {method}
train:
  epochs: 6
  batch_size: 16
  learning_rate: 3.0e-3
  warmup_ratio: 0.0
  early_stopping: null
  checkpoint_every_steps: null
  num_threads: 1
{extra}""", encoding="utf-8")
    return recipe


def test_train_validates_per_task_and_saved_model_predicts_every_head_as_trained(tmp_path, tiny_model):
    from transformers import AutoModel

    from tuneforge.core.tasks.multitask import MultiTaskPredictor

    recipe = write_multitask_job(tmp_path, tiny_model)
    run_dir = tmp_path / "run"
    code, out, err = run_cli("train", str(recipe), "--output", str(run_dir))
    assert code == 0, err

    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [record for record in epochs if "validation_mean_metric" in record]
    assert len(epochs) == 6
    last = epochs[-1]
    for task, metric in (("sentiment", "accuracy"), ("topics", "f1_micro"), ("size", "f1_macro")):
        assert f"validation_{task}/{metric}" in last and f"validation_{task}/loss" in last
    assert last["validation_mean_metric"] == pytest.approx(np.mean(
        [last["validation_sentiment/accuracy"], last["validation_topics/f1_micro"], last["validation_size/f1_macro"]]))
    assert last["validation_sentiment/accuracy"] > 0.8  # every head learns its own labelling
    assert last["validation_topics/f1_micro"] > 0.8
    assert last["validation_size/accuracy"] > 0.75

    # the model folder reloads without the recipe: a plain transformers encoder + heads + multitask.json
    model_dir = run_dir / "model"
    description = json.loads((model_dir / "multitask.json").read_text())
    assert [(t["name"], t["type"], t["labels"]) for t in description["tasks"]] == [
        ("sentiment", "single_label", ["negative", "positive"]), ("topics", "multi_label", list(sorted(TOPICS))),
        ("size", "single_label", ["long", "short"])]
    assert type(AutoModel.from_pretrained(model_dir)).__name__ == "BertModel"
    artifacts = json.loads((run_dir / "artifacts.json").read_text())["artifacts"]["run"]
    assert artifacts["passed"] and artifacts["probe"]["max_abs_logit_diff"] <= 1e-4
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and "sentiment/accuracy" in run["test"]

    # predict from the saved run = the in-memory model's test predictions, for every head
    sentiment_eval = pd.read_csv(run_dir / "eval" / "test" / "sentiment" / "predictions.csv")
    size_eval = pd.read_csv(run_dir / "eval" / "test" / "size" / "predictions.csv")
    topics_eval = pd.read_csv(run_dir / "eval" / "test" / "topics" / "predictions.csv")
    out_file = tmp_path / "predicted.jsonl"
    code, out, err = run_cli("predict", str(run_dir), "--input", str(tmp_path / "shared-test.jsonl"),
                             "--output", str(out_file))
    assert code == 0, err
    predicted = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(predicted) == 60
    assert [row["size_label"] for row in predicted] == size_eval.sort_values("row")["predicted"].tolist()
    assert [",".join(row["topics_label"]) for row in predicted] == [
        "" if isinstance(x, float) else x for x in topics_eval.sort_values("row")["predicted"].tolist()]
    for row in predicted:
        assert set(row["sentiment_probabilities"]) == {"negative", "positive"}
        assert row["sentiment_confidence"] == pytest.approx(max(row["sentiment_probabilities"].values()), abs=1e-5)
    code, _, err = run_cli("predict", str(run_dir), "--input", str(tmp_path / "sentiment-test.jsonl"),
                           "--output", str(tmp_path / "sentiment-predicted.csv"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "sentiment-predicted.csv")
    assert table["sentiment_label"].tolist() == sentiment_eval.sort_values("row")["predicted"].tolist()
    predictor = MultiTaskPredictor(run_dir)
    texts = [row["text"] for row in topic_rows(5, seed=9)]
    probabilities = predictor.probabilities({"text": texts})
    assert set(probabilities) == {"sentiment", "topics", "size"}
    assert np.allclose(probabilities["sentiment"].sum(axis=1), 1, atol=1e-5)
    code, out, _ = run_cli("predict", str(run_dir), "--text", "the film was great")
    assert code == 0 and out.splitlines()[0] == "sentiment\tpositive"

    # eval on a labelled file: every task whose label column the file has
    code, out, err = run_cli("eval", str(run_dir), "--data", str(tmp_path / "shared-test.jsonl"))
    assert code == 0, err
    evaluated = json.loads((run_dir / "eval" / "shared-test" / "topics" / "metrics.json").read_text())
    assert evaluated["n_examples"] == 60 and evaluated["f1_micro"] > 0.8
    code, out, err = run_cli("eval", str(run_dir), "--data", str(tmp_path / "sentiment-test.jsonl"))
    assert code == 0, err
    assert "not evaluated (no label column in sentiment-test.jsonl): topics, size" in out
    sentiment = json.loads((run_dir / "eval" / "sentiment-test" / "sentiment" / "metrics.json").read_text())
    assert sentiment["accuracy"] == pytest.approx(run["test"]["sentiment/accuracy"])


def test_freeze_trains_the_heads_on_a_frozen_encoder_with_the_activation_cache(tmp_path, tiny_model):
    from safetensors.torch import load_file

    recipe = write_multitask_job(tmp_path, tiny_model, method="freeze")
    run_dir = tmp_path / "run"
    code, out, err = run_cli("train", str(recipe), "--output", str(run_dir), "--set", "train.epochs=2",
                             "--set", "train.learning_rate=1.0e-2", "--set", "multitask.sampling=round_robin")
    assert code == 0, err
    assert "activation cache" in err
    before = load_file(str(tiny_model / "model.safetensors"))
    after = load_file(str(run_dir / "model" / "model.safetensors"))
    shared = [name for name in after if name in before]
    assert shared and all(torch.equal(before[name], after[name]) for name in shared)  # encoder untouched
    heads = load_file(str(run_dir / "model" / "heads.safetensors"))
    assert {"sentiment.weight", "topics.weight", "size.weight"} <= set(heads)


def test_lora_adapts_the_shared_encoder_and_trains_every_head_then_merges(tmp_path, tiny_model):
    from safetensors.torch import load_file

    recipe = write_multitask_job(tmp_path, tiny_model, method="lora")
    run_dir = tmp_path / "run"
    code, _, err = run_cli("train", str(recipe), "--output", str(run_dir), "--set", "train.epochs=1")
    assert code == 0, err
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert {f"base_model.model.heads.{i}.classifier.weight" for i in range(3)} <= set(adapter)  # heads train fully
    assert any("lora_A" in name for name in adapter)
    merged = load_file(str(run_dir / "model" / "model.safetensors"))
    assert not any("lora" in name for name in merged)
    base = load_file(str(tiny_model / "model.safetensors"))
    query = next(name for name in merged if name.endswith("attention.self.query.weight"))
    assert not torch.equal(merged[query], base[query])  # the LoRA update is merged into the encoder
    artifacts = json.loads((run_dir / "artifacts.json").read_text())["artifacts"]["run"]
    assert artifacts["passed"], artifacts["probe"]


def test_recipe_problems_are_reported_before_any_weights_load(tmp_path, tiny_model):
    base = write_multitask_job(tmp_path, tiny_model).read_text()

    def validate(text: str, *overrides: str) -> tuple[int, str]:
        (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
        code, _, err = run_cli("validate", str(tmp_path / "bad.yaml"), *overrides)
        return code, err

    code, err = validate(base.replace("    label_column: topics", "    lable_column: topics"))
    assert code == 1 and "bad.yaml:15:5: tasks.1.lable_column: unknown key 'lable_column' (did you mean " \
                          "'label_column'?)" in err
    code, err = validate(base.replace("train: sentiment.jsonl", "train: missing.jsonl"))
    assert code == 1 and "tasks[0] (sentiment): " in err and "missing.jsonl: data file not found" in err
    code, err = validate(base.replace("name: size", "name: topics"))
    assert code == 1 and "task name(s) 'topics' appear more than once" in err
    code, err = validate(base.replace("weight: 0.5", "weight: 0"))
    assert code == 1 and "tasks.2.weight: Input should be greater than 0" in err
    code, err = validate(base.replace("metric: f1_macro", "metric: f1_micro"))
    assert code == 1 and "metric 'f1_micro' does not fit a single_label task" in err
    code, err = validate(base, "--set", "method.name=adapter")
    assert code == 1 and "method.name adapter: not supported yet for task multitask" in err
    code, err = validate(base, "--set", "multitask.sampling=temprature")
    assert code == 1 and "multitask.sampling" in err
    code, err = validate(base.replace("  label_column: size", "  label_column: colour"))
    assert code == 1 and "tasks[2] (size): " in err and "no column 'colour'" in err
    code, err = validate(base.replace("task: multitask", "task: classification"))
    assert code == 1 and "the tasks and multitask sections need `task: multitask`" in err
    code, err = validate(base.replace("  train: shared.jsonl\n", ""))
    assert code == 1 and "task(s) topics, size have no training file" in err
    code, err = validate(base)
    assert code == 0


@pytest.mark.integration
def test_minilm_learns_sst2_sentiment_and_sms_spam_with_one_encoder(tmp_path, shared_data):
    """Two real tasks, one shared MiniLM: both heads end well above their majority-class baseline."""
    sst2, spam = shared_data("sst2"), shared_data("sms_spam")
    sst2_rows = pd.read_json(sst2 / "train.jsonl", lines=True)
    spam_rows = pd.read_json(spam / "train.jsonl", lines=True).sample(frac=1.0, random_state=0)
    sst2_rows.iloc[:600].to_json(tmp_path / "sst2-train.jsonl", orient="records", lines=True)
    sst2_rows.iloc[600:800].to_json(tmp_path / "sst2-val.jsonl", orient="records", lines=True)
    spam_rows.iloc[:600].to_json(tmp_path / "spam-train.jsonl", orient="records", lines=True)
    spam_rows.iloc[600:900].to_json(tmp_path / "spam-val.jsonl", orient="records", lines=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("""name: sst2-spam
model: minilm
task: multitask
data: {max_length: 64}
tasks:
  - {name: sentiment, train: sst2-train.jsonl, validation: sst2-val.jsonl}
  - {name: spam, train: spam-train.jsonl, validation: spam-val.jsonl, metric: f1_macro}
multitask: {sampling: proportional}
method: {name: freeze, unfreeze_top_layers: 2}
train: {epochs: 3, batch_size: 32, learning_rate: 2.0e-3, num_threads: 1, early_stopping: null,
        checkpoint_every_steps: null}
""", encoding="utf-8")
    run_dir = tmp_path / "run"
    code, _, err = run_cli("train", str(recipe), "--output", str(run_dir))
    assert code == 0, err
    best = json.loads((run_dir / "run.json").read_text())["validation"]
    sentiment_majority = pd.read_json(tmp_path / "sst2-val.jsonl", lines=True)["label"].value_counts(normalize=True).max()
    spam_majority = pd.read_json(tmp_path / "spam-val.jsonl", lines=True)["label"].value_counts(normalize=True).max()
    assert best["sentiment/accuracy"] > sentiment_majority + 0.10, best  # measured: 0.74 against 0.57
    assert best["spam/accuracy"] > spam_majority + 0.05 and best["spam/f1_macro"] > 0.85, best  # 0.98 vs 0.87
