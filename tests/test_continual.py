"""Continual fine-tuning (`tuneforge train RECIPE --from RUN_DIR`, recipe key `continual`): head growth, the replay
sampler, EWC, forgetting.json, lineage in `tuneforge runs`, refusals. Tiny models only."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import make_tiny_bert, run_cli, synthetic_rows, tiny_recipe_text, write_jsonl
from tiny_runs import shared_tiny_run
from tuneforge.core.data.replay import old_rows_per_batch, replay_batch_count, replay_batches, stratified_sample
from tuneforge.core.engine.continual import grow_classifier_head, prepare_continual
from tuneforge.core.engine.ewc import ElasticWeightConsolidation
from tuneforge.core.engine.validate import validate_job
from tuneforge.core.recipe import load_run_recipe
from tuneforge.core.tasks import task_for

NEW_LABELS = ("sad", "happy")  # the new data's labels: none of them is the old run's (negative, positive)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory, tiny_model) -> Path:
    return shared_tiny_run(tmp_path_factory, tiny_model)


def write_new_job(folder: Path, model: Path, continual: str, epochs: int = 2) -> Path:
    """New data with two new labels (and one old one), and a recipe continuing with ``continual`` keys."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = synthetic_rows(90, seed=5, labels=NEW_LABELS) + synthetic_rows(30, seed=6)[:30]
    rows = [row for row in rows if row["label"] != "negative"]  # old label 'positive' stays, 'negative' is absent
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", [r for r in synthetic_rows(40, seed=7, labels=NEW_LABELS)])
    recipe = folder / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(model, name="continued").replace("epochs: 6", f"epochs: {epochs}")
                      + f"continual:\n{continual}", encoding="utf-8")
    return recipe


def tiny_inputs(count: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {"input_ids": torch.randint(5, 30, (count, 9), generator=generator),
            "attention_mask": torch.ones(count, 9, dtype=torch.long)}


# ----------------------------------------------------------------------------- head growth


def test_head_growth_keeps_the_old_labels_logits_exactly(tiny_model):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        before = model(**inputs).logits
    old_weight, old_bias = model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()
    grow_classifier_head(model, ["a", "b", "c"], ["a", "b", "c", "d", "e"])
    assert torch.equal(model.classifier.weight[:3], old_weight) and torch.equal(model.classifier.bias[:3], old_bias)
    with torch.no_grad():
        after = model(**inputs).logits
    assert after.shape == (6, 5)
    # the same weights (bit for bit); the logits equal up to float rounding (a wider matmul sums in another order)
    torch.testing.assert_close(after[:, :3], before, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model.classifier.weight[3:], torch.zeros_like(model.classifier.weight[3:]))
    assert model.config.num_labels == 5 and model.config.id2label[4] == "e" and model.config.label2id["d"] == 3


def test_continual_start_answers_the_old_labels_as_the_old_run_did(old_run, tiny_model, tmp_path):
    recipe_path = write_new_job(tmp_path, tiny_model, "  strategy: none\n")
    job = validate_job(recipe_path, [f"continual.from_run={old_run}"])
    continual = prepare_continual(job.recipe, job.data, log=lambda message: None)
    assert continual.data.label_names == ["negative", "positive", "happy", "sad"]  # old order, then the new ones
    task = task_for("classification")
    _, grown = continual.load_model(task, job.recipe, continual.data.label_names)  # step 0 of the new run
    old = task.load_trained(old_run, load_run_recipe(old_run))
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(grown.eval()(**inputs).logits[:, :2], old(**inputs).logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(grown.classifier.weight[:2], old.classifier.weight)
    assert torch.equal(grown.classifier.bias[:2], old.classifier.bias)


# ----------------------------------------------------------------------------- replay


def test_replay_batches_hold_the_stated_share_of_old_rows():
    new_rows, old_rows, batch_size, share = 103, 20, 10, 0.2
    batches = replay_batches(new_rows, old_rows, batch_size, share, random.Random(0))
    assert len(batches) == replay_batch_count(new_rows, batch_size, share) == 13  # 8 new rows per batch
    assert old_rows_per_batch(batch_size, share) == 2
    for batch in batches[:-1]:
        assert len(batch) == batch_size
        assert sum(index >= new_rows for index in batch) == 2  # 20% of each batch is old
    new_seen = Counter(index for batch in batches for index in batch if index < new_rows)
    assert sorted(new_seen) == list(range(new_rows)) and set(new_seen.values()) == {1}  # every new row once
    old_seen = Counter(index for batch in batches for index in batch if index >= new_rows)
    assert set(old_seen) <= set(range(new_rows, new_rows + old_rows))
    assert max(old_seen.values()) - min(old_seen.values()) <= 1  # the old rows are cycled through evenly
    assert replay_batches(new_rows, old_rows, batch_size, share, random.Random(0)) == batches  # seeded (resume)


def test_stratified_sample_keeps_the_label_shares():
    labels = [0] * 60 + [1] * 30 + [2] * 9 + [3] * 1
    chosen = stratified_sample(labels, 20, seed=0)
    counts = Counter(labels[i] for i in chosen)
    assert len(chosen) == 20 and len(set(chosen)) == 20
    assert set(counts) == {0, 1, 2, 3}  # every label kept
    for label, total in Counter(labels).items():
        assert abs(counts[label] - 20 * total / 100) <= 1.0, counts
    assert stratified_sample(labels, 20, seed=0) == chosen
    assert stratified_sample(labels, 500, seed=0) == list(range(100))


def test_continual_replay_puts_old_rows_into_every_batch(old_run, tiny_model, tmp_path):
    recipe_path = write_new_job(tmp_path, tiny_model, "  strategy: replay\n  replay: 0.25\n  previous_rows: 40\n")
    job = validate_job(recipe_path, [f"continual.from_run={old_run}"])
    continual = prepare_continual(job.recipe, job.data, log=lambda message: None)
    train = continual.data.train
    new_rows = continual.new_rows
    assert len(train) == new_rows + 40
    old_texts = set(pd.read_json(load_run_recipe(old_run).data.train, lines=True)["text"])
    assert all(text in old_texts for text in train.texts[new_rows:])  # the appended rows are the old run's
    assert Counter(train.labels[new_rows:]).keys() <= {0, 1}  # in the old labels' ids
    task = task_for("classification")
    batches = continual.training_batches(task, job.recipe, train, 16, random.Random(1))
    assert len(batches) == continual.batches_per_epoch(task, job.recipe, train, 16)
    for batch in batches[:-1]:
        assert sum(index >= new_rows for index in batch) == 4  # 25% of 16


def test_previous_data_changed_since_the_old_run_is_refused(old_run, tiny_model, tmp_path):
    import shutil

    copy = tmp_path / "old-copy"
    shutil.copytree(old_run, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    moved = tmp_path / "train-moved.jsonl"
    moved.write_text(Path(manifest["data"]["train"]["path"]).read_text() + '{"text": "good", "label": "positive"}\n')
    manifest["data"]["train"]["path"] = str(moved)  # the same path recorded, but the file's bytes differ
    (copy / "manifest.json").write_text(json.dumps(manifest))
    recipe_path = write_new_job(tmp_path / "new", tiny_model, "  strategy: replay\n")
    code, _, err = run_cli("train", str(recipe_path), "--from", str(copy), "--output", str(tmp_path / "run"))
    assert code == 1
    assert "sha256 differs" in err and "continual.previous_data" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- EWC


def test_ewc_fisher_and_penalty():
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.classifier = nn.Linear(4, 3)

        def forward(self, x):
            return type("Out", (), {"logits": self.classifier(torch.tanh(self.body(x)))})()

    model = Tiny()
    ewc = ElasticWeightConsolidation(list(model.named_parameters()), strength=10.0)
    rows = [({"x": torch.randn(1, 4)}, i % 2) for i in range(12)]
    ewc.estimate(model, rows, label_count=2)  # the third label is new: no Fisher information for its head row
    assert ewc.rows == 12
    assert torch.all(ewc.fisher["classifier.weight"][2] == 0) and ewc.fisher["classifier.bias"][2] == 0
    assert ewc.fisher["body.weight"].sum() > 0
    assert float(ewc.penalty().detach()) == 0.0  # at the old weights
    with torch.no_grad():
        model.body.weight += 0.1
    expected = 0.5 * 10.0 * float((ewc.fisher["body.weight"] * 0.01).sum())
    assert float(ewc.penalty().detach()) == pytest.approx(expected, rel=1e-4)
    ewc.penalty().backward()  # a loss term: gradients flow to the weights
    assert model.body.weight.grad is not None


# ----------------------------------------------------------------------------- end to end


def test_continual_run_writes_forgetting_json_and_lineage(old_run, tiny_model, tmp_path):
    recipe_path = write_new_job(tmp_path / "new", tiny_model, "  strategy: replay\n  replay: 0.25\n")
    run = tmp_path / "runs" / "continued"
    code, out, err = run_cli("train", str(recipe_path), "--from", str(old_run), "--output", str(run))
    assert code == 0, err
    assert json.loads((run / "labels.json").read_text()) == ["negative", "positive", "happy", "sad"]
    status = json.loads((run / "run.json").read_text())
    assert status["continual"]["from"] == str(old_run.resolve()) and status["continual"]["strategy"] == "replay"
    assert status["continual"]["new_labels"] == ["happy", "sad"]
    config = (run / "config.yaml").read_text()
    assert "from_run: " + str(old_run.resolve()) in config  # --resume and reruns keep the lineage

    record = json.loads((run / "forgetting.json").read_text())
    old_status = json.loads((old_run / "run.json").read_text())
    predictions = pd.read_csv(run / "eval" / "previous-test" / "predictions.csv", keep_default_na=False)
    after = float((predictions["gold"] == predictions["predicted"]).mean())
    assert len(predictions) == record["rows"] == old_status["test"]["n_examples"]
    assert record["before"]["accuracy"] == pytest.approx(old_status["test"]["accuracy"])
    assert record["before"]["f1_macro"] == pytest.approx(old_status["test"]["f1_macro"])
    assert record["after"]["accuracy"] == pytest.approx(after)
    assert record["drop"]["accuracy"] == pytest.approx(record["before"]["accuracy"] - after)
    assert record["new_test"]["accuracy"] == pytest.approx(status["test"]["accuracy"])
    assert "forgetting (replay)" in out and f"{record['after']['accuracy']:.4f} after" in out
    assert 'id="forgetting"' in (run / "report.html").read_text()

    code, out, _ = run_cli("runs", str(run.parent))
    assert code == 0
    header, line = out.splitlines()[:2]
    assert "from" in header.split() and old_run.name in line.split()


def test_a_different_model_is_refused_in_one_line(old_run, tmp_path):
    other = make_tiny_bert(tmp_path / "other-bert", layers=2)
    recipe_path = write_new_job(tmp_path / "new", other, "  strategy: none\n")
    code, _, err = run_cli("train", str(recipe_path), "--from", str(old_run), "--output", str(tmp_path / "run"))
    assert code == 1 and "fine-tuned model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_different_task_is_refused_in_one_line(old_run, tiny_model, tmp_path):
    recipe_path = write_new_job(tmp_path / "new", tiny_model, "  strategy: none\n")
    text = recipe_path.read_text().replace("name: continued\n", "name: continued\ntask: multilabel\n")
    recipe_path.write_text(text)
    code, _, err = run_cli("train", str(recipe_path), "--from", str(old_run), "--output", str(tmp_path / "run"))
    assert code == 1 and "continual" in err and "multilabel" in err and len(err.strip().splitlines()) == 1


def test_continual_section_without_from_is_refused(tiny_model, tmp_path):
    recipe_path = write_new_job(tmp_path / "new", tiny_model, "  strategy: replay\n")
    code, _, err = run_cli("train", str(recipe_path), "--output", str(tmp_path / "run"))
    assert code == 1 and "--from RUN_DIR" in err
