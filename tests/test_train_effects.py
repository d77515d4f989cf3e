"""Recipe keys that change training show their effect (docs/reliability.md §7):

- ``train.grad_accum_steps``: two accumulated batches of 16 give the optimizer the gradients of one batch of 32
  (captured at the loop's first optimizer step, dropout off so both see the same function);
- ``train.class_weights: balanced``: on imbalanced rows whose text says nothing about the label, the unweighted
  model learns the majority's prior, the weighted one moves its decision toward the rare class.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import FILLER, make_tiny_bert, run_cli, synthetic_rows, tiny_recipe_text, write_jsonl

import tuneforge.core.engine.loop as loop


class FirstStep(Exception):
    """Raised in place of the first optimizer step, carrying the gradients it would have applied."""

    def __init__(self, gradients: dict[str, torch.Tensor]) -> None:
        super().__init__("first optimizer step reached")
        self.gradients = gradients


@pytest.fixture(scope="module")
def model_without_dropout(tmp_path_factory):
    folder = make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"), layers=2)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def first_step_gradients(folder, model, batch_size: int, accumulation: int, monkeypatch) -> dict[str, torch.Tensor]:
    def capture(optimizer, scheduler, method, trained, *args, **kwargs):
        raise FirstStep({name: p.grad.detach().clone() for name, p in trained.named_parameters() if p.grad is not None})

    monkeypatch.setattr(loop, "take_optimizer_step", capture)
    recipe = folder / f"b{batch_size}x{accumulation}.yaml"
    recipe.write_text(tiny_recipe_text(model, data_keys="  validation: validation.jsonl\n"), encoding="utf-8")
    with pytest.raises(FirstStep) as step:
        run_cli("train", str(recipe), "--output", str(folder / f"run-{batch_size}x{accumulation}"),
                "--set", f"train.batch_size={batch_size}", "--set", f"train.grad_accum_steps={accumulation}")
    return step.value.gradients


def test_accumulated_steps_give_the_large_batchs_gradients(tmp_path, model_without_dropout, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(32, seed=1))  # exactly one batch of 32, or two of 16
    write_jsonl(tmp_path / "validation.jsonl", synthetic_rows(8, seed=2))
    write_jsonl(tmp_path / "test.jsonl", synthetic_rows(8, seed=3))
    large = first_step_gradients(tmp_path, model_without_dropout, 32, 1, monkeypatch)
    accumulated = first_step_gradients(tmp_path, model_without_dropout, 16, 2, monkeypatch)
    single = first_step_gradients(tmp_path, model_without_dropout, 16, 1, monkeypatch)  # half the batch
    assert large.keys() == accumulated.keys() and len(large) > 10
    for name in large:
        torch.testing.assert_close(accumulated[name], large[name], rtol=1e-4, atol=1e-6, msg=name)
    # the comparison can tell batches apart: one batch of 16 alone has other gradients
    assert max(float((single[name] - large[name]).abs().max()) for name in large) > 1e-3


def uninformative_rows(count: int, rare_share: float, seed: int) -> list[dict]:
    """Texts of filler words only, labels drawn with ``rare_share`` positives: only the prior can be learned."""
    rng = random.Random(seed)
    return [{"text": " ".join(rng.sample(FILLER, rng.randint(2, 6))),
             "label": "positive" if rng.random() < rare_share else "negative"} for _ in range(count)]


def test_balanced_class_weights_move_the_decision_toward_the_rare_class(tmp_path, tiny_model):
    from tuneforge.core.tasks.predictor import Predictor

    write_jsonl(tmp_path / "train.jsonl", uninformative_rows(200, 0.15, seed=1))
    write_jsonl(tmp_path / "test.jsonl", uninformative_rows(40, 0.15, seed=2))
    probes = [row["text"] for row in uninformative_rows(40, 0.15, seed=3)]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, data_keys="  validation_fraction: 0.2\n"), encoding="utf-8")
    rare_probability = {}
    for weights in ("none", "balanced"):
        run = tmp_path / weights
        # calibrate=false: on rows without signal, temperature scaling rightly pulls the balanced model's
        # confidences back to the prior (its small offset sharpened by T < 1); the weights' effect is the raw softmax.
        code, _, err = run_cli("train", str(recipe), "--output", str(run), "--set", "train.epochs=3",
                               "--set", f"train.class_weights={weights}", "--set", "train.calibrate=false")
        assert code == 0, err
        predictor = Predictor(run)
        rare_probability[weights] = float(predictor.probabilities(probes)[:, predictor.label_names.index("positive")].mean())
    # unweighted: about the prior (15%); balanced: each class weighs the same in the loss, so about even
    assert rare_probability["none"] < 0.3, rare_probability
    assert rare_probability["balanced"] > rare_probability["none"] + 0.2, rare_probability
