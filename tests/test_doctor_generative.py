"""`tuneforge doctor` on generative recipes (the sft / causal-lm preflight with its loss-mask example) and the
run manifest of a generative run, on the tiny random Llama of generative_fixtures."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from generative_fixtures import make_tiny_llama, write_domain_text, write_language_model_job, write_sft_job
from tuneforge.apps.doctor.generative import loss_mask_spans, render_loss_mask


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def sft_recipe(tmp_path_factory, tiny_llama) -> Path:
    return write_sft_job(tmp_path_factory.mktemp("sft"), tiny_llama, method="lora")


def test_loss_mask_spans_group_tokens_and_never_train_position_zero():
    assert loss_mask_spans([5, 6, 7, 8, 9], [5, -100, -100, 8, 9]) == [(False, [5, 6, 7]), (True, [8, 9])]
    assert loss_mask_spans([5, 6, 7], [5, 6, 7]) == [(False, [5]), (True, [6, 7])]


def test_render_loss_mask_brackets_the_prompt_and_marks_the_answer(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    prompt = tokenizer("user what is the capital of italy ?", add_special_tokens=False)["input_ids"]
    answer = tokenizer("rome .", add_special_tokens=False)["input_ids"]
    text = render_loss_mask(tokenizer, prompt + answer, [-100] * len(prompt) + answer)
    assert text.startswith("[user what is the capital of italy") and text.endswith("]{{rome.}}")
    cut = render_loss_mask(tokenizer, prompt + answer, [-100] * len(prompt) + answer, max_tokens=3)
    assert cut == f"[user what is] ... ({len(prompt) + len(answer) - 3} more tokens)"


def test_doctor_sft_preflight_passes_and_shows_one_example_with_its_loss_mask(sft_recipe, tmp_path):
    code, out, _ = run_cli("doctor", str(sft_recipe), "--steps", "5", "--json", str(tmp_path / "doctor.json"))
    assert code == 0, out
    assert "ok    recipe: valid" in out and "task sft" in out and "not supported yet" not in out
    assert "ok    method: 'lora' applies to PeftModelForCausalLM" in out
    example = next(line.strip() for line in out.splitlines() if line.strip().startswith("[<|im_start|>"))
    prompt, answer = example.split("]{{")
    assert "user" in prompt and "assistant" in prompt and "<|im_end|>" in answer  # the answer's end is trained
    assert "ok    loss mask:" in out and "the prompt is masked" in out
    # LoRA's A gets no gradient until B has moved off zero: all tensors must move over the steps, not at step 1.
    assert "ok    gradients: all 8 trainable tensors" in out and "in 5 backward pass(es)" in out
    assert "ok    frozen: none of the" in out and "ok    preflight loss: finite and falling" in out
    measured = json.loads((tmp_path / "doctor.json").read_text())["measurements"]
    assert measured["preflight"]["loss_after"] < measured["preflight"]["loss_before"]
    assert 0 < measured["example"]["trained_tokens"] < measured["example"]["tokens"]


def test_doctor_sft_preflight_fails_when_the_loss_does_not_fall(sft_recipe):
    code, out, _ = run_cli("doctor", str(sft_recipe), "--set", "train.learning_rate=1e-12", "--steps", "2")
    assert code == 1
    assert "fail  preflight loss: did not fall on 8 training rows in 2 steps" in out and "fix: raise" in out


def test_doctor_causal_lm_preflight_trains_every_token(tmp_path, tiny_llama):
    write_domain_text(tmp_path / "domain.txt", 40)
    recipe = write_language_model_job(tmp_path / "recipe.yaml", tiny_llama, "causal-lm", "domain.txt",
                                      method="freeze", epochs=1)
    code, out, _ = run_cli("doctor", str(recipe), "--steps", "3")
    assert code == 0, out
    assert "ok    loss mask:" in out and "(every token after the first)" in out
    assert "ok    frozen: none of the" in out and "ok    preflight loss: finite and falling" in out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama) -> Path:
    """A finished LoRA sft run (merged), shared by the tests below, which only read it."""
    folder = tmp_path_factory.mktemp("lora-run")
    recipe = write_sft_job(folder, tiny_llama, method="lora", epochs=1)
    code, _, err = run_cli("train", str(recipe), "--output", str(folder / "run"), "--set",
                           "generative.generation.prompts=0", "--set", "generative.generation.evaluate_base=false")
    assert code == 0, err
    return folder / "run"


def test_generative_run_writes_a_manifest(lora_run):
    folder = lora_run.parent
    manifest = json.loads((lora_run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["ended"] is not None
    train = manifest["data"]["train"]
    assert train["rows"] == 140
    assert train["sha256"] == hashlib.sha256((folder / "train.jsonl").read_bytes()).hexdigest()
    assert manifest["overrides"] == ["generative.generation.prompts=0", "generative.generation.evaluate_base=false"]
    assert manifest["recipe_file"]["sha256"] == hashlib.sha256((folder / "recipe.yaml").read_bytes()).hexdigest()


def test_doctor_checks_a_generative_run_folder_and_catches_a_corrupted_model_file(lora_run, tmp_path):
    code, out, _ = run_cli("doctor", str(lora_run))
    assert code == 0, out
    assert "ok    run: completed: task sft" in out
    assert "ok    saved model: read back with LanguageModelTask.load_trained" in out and "max |Δlogit|" in out
    assert "ok    saved model files: all" in out and "match their sha256" in out
    code, out, _ = run_cli("runs", str(lora_run.parent), "--json")
    assert json.loads(out)[0]["checked"] == "passed"

    copy = tmp_path / "copy"
    shutil.copytree(lora_run, copy)
    weights = copy / "model" / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-64] ^= 0xFF  # one flipped byte in the last tensor, as a bad disk or a cut download leaves it
    weights.write_bytes(bytes(damaged))
    code, out, _ = run_cli("doctor", str(copy))
    assert code == 1
    assert "fail  saved model files: 1 of" in out and "changed since checked: model/model.safetensors" in out
    (copy / "adapter" / "adapter_config.json").unlink()
    code, out, _ = run_cli("doctor", str(copy))
    assert code == 1 and "missing: adapter/adapter_config.json" in out
