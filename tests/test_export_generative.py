"""``tuneforge export --format safetensors`` of language-model runs (sft, causal-lm, masked-lm) on a tiny
random Llama / BERT built from a config (no downloads); serve refuses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_bert, run_cli, synthetic_rows, write_jsonl
from generative_fixtures import make_tiny_llama, write_domain_text, write_language_model_job, write_sft_job

from tuneforge.core.recipe import load_run_recipe
from tuneforge.core.tasks import task_for

FAST = ("--set", "generative.generation.prompts=0", "--set", "generative.generation.evaluate_base=false")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def sft_lora_run(tmp_path_factory, tiny_llama) -> Path:
    """An sft LoRA run (merged into model/), trained once for the module."""
    folder = tmp_path_factory.mktemp("sft-lora")
    recipe = write_sft_job(folder, tiny_llama, method="lora", epochs=2, learning_rate=0.02)
    code, _, err = run_cli("train", str(recipe), "--output", str(folder / "run"), *FAST)
    assert code == 0, err
    return folder / "run"


@pytest.fixture(scope="module")
def sft_export(sft_lora_run) -> tuple[Path, str]:
    """The run exported to its default folder: (folder, what the command printed)."""
    code, out, err = run_cli("export", str(sft_lora_run), "--format", "safetensors")
    assert code == 0, err
    return sft_lora_run / "export" / "safetensors", out


def greedy(model, ids: list[int], new_tokens: int = 6) -> list[int]:
    with torch.inference_mode():
        output = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return output[0, len(ids):].tolist()


def test_sft_lora_run_exports_to_safetensors_that_transformers_loads(sft_lora_run, sft_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, printed = sft_export
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "labels.json").exists() and f"exported safetensors to {out}" in printed
    report = json.loads((out / "export_report.json").read_text())
    assert report["status"] == "ok" and report["task"] == "sft" and report["format"] == "safetensors"
    assert report["model_file"] == "model.safetensors" and report["model_class"] == "LlamaForCausalLM"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(report["files"])
    assert set(report["versions"]) >= {"tuneforge", "torch", "transformers"} and report["created"]
    parity = report["parity"]
    assert parity["passed"] and parity["agreement"] == 1.0 and parity["max_abs_logit_diff"] <= parity["tolerance"]
    assert parity["n_examples"] > 8 and parity["unit"] == "token positions" and "validation split" in parity["rows"]
    assert report["integrity"]["passed"]
    # the export is recorded for `tuneforge doctor`, in the export folder and in the run's artifacts.json
    assert json.loads((out / "artifacts.json").read_text())["artifacts"]["export"]["passed"]
    assert json.loads((sft_lora_run / "artifacts.json").read_text())["artifacts"]["export:safetensors"]["passed"]

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in exported.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # the run's chat template travels with the export
    ids = list(tokenizer.apply_chat_template([{"role": "user", "content": "say hello"}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"])
    recipe = load_run_recipe(sft_lora_run)
    run_model = task_for(recipe.task).load_trained(sft_lora_run, recipe)  # as tuneforge generate reads the run
    answer = greedy(exported, ids)
    assert answer and answer == greedy(run_model, ids)
    from transformers import pipeline

    generated = pipeline("text-generation", model=str(out))("say hello", max_new_tokens=2, do_sample=False)
    assert isinstance(generated[0]["generated_text"], str)


def test_export_refuses_what_a_language_model_run_does_not_support(sft_lora_run, sft_export, tmp_path):
    for fmt in ("onnx", "torchscript"):
        code, _, err = run_cli("export", str(sft_lora_run), "--format", fmt, "--output", str(tmp_path / fmt))
        assert code == 1 and f"--format {fmt}: not supported yet for task 'sft' runs" in err, err
        assert "safetensors" in err and not (tmp_path / fmt).exists()
    code, _, err = run_cli("export", str(sft_lora_run), "--format", "safetensors", "--quantize", "int8",
                           "--output", str(tmp_path / "int8"))
    assert code == 1 and "--quantize int8: not supported yet for language models" in err, err
    code, _, err = run_cli("export", str(sft_lora_run), "--format", "safetensors", "--data", str(tmp_path / "x.jsonl"),
                           "--output", str(tmp_path / "data"))
    assert code == 1 and "--data: not supported yet" in err, err
    # re-exporting into the same (default) folder: never overwritten
    out, _ = sft_export
    before = (out / "model.safetensors").stat().st_mtime_ns
    code, _, err = run_cli("export", str(sft_lora_run), "--format", "safetensors")
    assert code == 1 and "never overwrites" in err, err
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_serve_refuses_a_language_model_run_and_its_export(sft_lora_run, sft_export):
    out, _ = sft_export
    for path in (sft_lora_run, out):
        code, _, err = run_cli("serve", str(path), "--port", "1")
        assert code == 1 and "task 'sft'" in err and "not supported yet" in err, err
        assert "AutoModelForCausalLM.from_pretrained" in err


def test_a_prompt_tuning_run_is_refused(tmp_path, tiny_llama):
    recipe = write_sft_job(tmp_path, tiny_llama, method="prompt", epochs=1, learning_rate=0.1)
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(recipe), "--output", str(run), *FAST)
    assert code == 0, err
    code, _, err = run_cli("export", str(run), "--format", "safetensors")
    assert code == 1 and "not supported yet; train with a mergeable method" in err and "'prompt'" in err, err
    assert not (run / "export").exists()


@pytest.mark.parametrize("task", ["causal-lm", "masked-lm"])
def test_causal_and_masked_lm_runs_export(tmp_path, tiny_llama, task):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if task == "causal-lm":
        write_domain_text(tmp_path / "domain.txt", 60)
        recipe = write_language_model_job(tmp_path / "recipe.yaml", tiny_llama, task, "domain.txt", epochs=1)
    else:
        bert = make_tiny_bert(tmp_path / "bert")
        write_jsonl(tmp_path / "unlabelled.jsonl", [{"text": r["text"]} for r in synthetic_rows(120, seed=5)])
        recipe = write_language_model_job(tmp_path / "recipe.yaml", bert, task, "unlabelled.jsonl", max_length=24,
                                          epochs=1, batch_size=16, learning_rate=0.005)
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 0, err
    code, _, err = run_cli("export", str(run), "--format", "safetensors", "--output", str(tmp_path / "export"))
    assert code == 0, err
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["status"] == "ok" and report["task"] == task and report["parity"]["passed"]
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForMaskedLM
    assert f"{auto.__name__}.from_pretrained" in report["load_with"]
    auto.from_pretrained(tmp_path / "export")
    code, _, err = run_cli("export", str(run), "--format", "onnx")
    assert code == 1 and f"not supported yet for task '{task}' runs" in err
