"""Generative tasks (sft, causal-lm, masked-lm) on a tiny random Llama / BERT built from a config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_bert, run_cli, synthetic_rows, write_jsonl
from generative_fixtures import (make_tiny_llama, write_domain_text, write_language_model_job,
                                 write_sft_job)

from tuneforge.base.recipe import GenerativeConfig
from tuneforge.core.data.generative import (IGNORE_INDEX, GenerativeSplit, collate, conversation_ids_and_labels,
                                       encode_sft, pack)
from tuneforge.core.evaluate.generation import exact_match, generation_scores, lcs_length, rouge_l


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def ids_of(tokenizer, words: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(words.split())


# ----------------------------------------------------------------------------- prompt masking


def test_labels_are_ignored_exactly_on_prompt_and_padding_tokens(tokenizer):
    settings = GenerativeConfig(system_prompt="be brief")
    conversation = [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": "what is the capital of france ?"},
                    {"role": "assistant", "content": "paris ."}]
    ids, labels = conversation_ids_and_labels(tokenizer, conversation, settings)
    prompt = ids_of(tokenizer, "<|im_start|> system be brief <|im_end|> <|im_start|> user what is the capital of "
                               "france ? <|im_end|> <|im_start|> assistant")
    answer = ids_of(tokenizer, "paris . <|im_end|>")
    assert ids == prompt + answer
    assert labels == [IGNORE_INDEX] * len(prompt) + answer  # token by token: the answer and its end token only

    short = [{"role": "user", "content": "say hello"}, {"role": "assistant", "content": "hello ."}]
    encoded = encode_sft(tokenizer, GenerativeSplit("x", conversations=[conversation, short]), GenerativeConfig(), 64)
    batch = collate(encoded, [0, 1], tokenizer.pad_token_id)
    short_ids, short_labels = encoded.input_ids[1], encoded.labels[1]
    width = batch["input_ids"].shape[1]
    assert width == len(ids) > len(short_ids)
    padding = width - len(short_ids)
    assert batch["input_ids"][1].tolist() == short_ids + [tokenizer.pad_token_id] * padding
    assert batch["labels"][1].tolist() == short_labels + [IGNORE_INDEX] * padding
    assert batch["attention_mask"][1].tolist() == [1] * len(short_ids) + [0] * padding
    short_prompt = len(ids_of(tokenizer, "<|im_start|> user say hello <|im_end|> <|im_start|> assistant"))
    assert short_labels == [IGNORE_INDEX] * short_prompt + ids_of(tokenizer, "hello . <|im_end|>")


def test_every_assistant_turn_of_a_chat_is_trained_and_nothing_else(tokenizer):
    conversation = [{"role": "user", "content": "say hello"}, {"role": "assistant", "content": "hello ."},
                    {"role": "user", "content": "add one"}, {"role": "assistant", "content": "two ."}]
    ids, labels = conversation_ids_and_labels(tokenizer, conversation, GenerativeConfig())
    tokens = tokenizer.convert_ids_to_tokens(ids)
    trained = [token for token, label in zip(tokens, labels) if label != IGNORE_INDEX]
    assert trained == ["hello", ".", "<|im_end|>", "two", ".", "<|im_end|>"]
    assert all(label in (IGNORE_INDEX, token_id) for label, token_id in zip(labels, ids))


def test_plain_prompt_without_chat_template_masks_the_prompt(tokenizer):
    settings = GenerativeConfig(chat_template=False)
    conversation = [{"role": "user", "content": "add one"}, {"role": "assistant", "content": "two ."}]
    ids, labels = conversation_ids_and_labels(tokenizer, conversation, settings)
    answer = ids_of(tokenizer, "two . <|im_end|>")
    assert ids[-3:] == answer and labels[-3:] == answer
    assert set(labels[:-3]) == {IGNORE_INDEX}


def test_truncation_is_counted_and_examples_without_answer_tokens_are_dropped(tokenizer):
    conversation = [{"role": "user", "content": "what is the capital of france ?"},
                    {"role": "assistant", "content": "paris ."}]
    split = GenerativeSplit("x", conversations=[conversation] * 3)
    prompt_length = len(ids_of(tokenizer, "<|im_start|> user what is the capital of france ? <|im_end|> "
                                          "<|im_start|> assistant"))
    cut = encode_sft(tokenizer, split, GenerativeConfig(), prompt_length + 1)
    assert (cut.truncated, cut.dropped, len(cut)) == (3, 0, 3)
    assert cut.labels[0][-1] == ids_of(tokenizer, "paris")[0]
    gone = encode_sft(tokenizer, split, GenerativeConfig(), prompt_length)
    assert (gone.truncated, gone.dropped, len(gone)) == (3, 3, 0)


def test_packed_examples_attend_only_to_themselves(tiny_llama, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                     for q, a in [("what is the capital of spain ?", "madrid ."), ("say hello", "hello ."),
                                  ("add two", "three .")]]
    encoded = encode_sft(tokenizer, GenerativeSplit("x", conversations=conversations), GenerativeConfig(), 64)
    packed = pack(encoded, 64)
    assert len(packed) == 1 and packed.position_ids[0].count(0) == 3
    batch = collate(packed, [0], tokenizer.pad_token_id)
    assert batch["attention_mask"].shape == (1, 1, len(packed.input_ids[0]), len(packed.input_ids[0]))
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                              attention_mask=batch["attention_mask"]).logits[0]
        start = 0
        for ids in encoded.input_ids:
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            assert torch.allclose(packed_logits[start:start + len(ids)], alone, atol=1e-5)
            start += len(ids)
    # The first token of each packed example is never a target (its predecessor is another example).
    starts = [i for i, position in enumerate(packed.position_ids[0]) if position == 0]
    assert all(packed.labels[0][i] == IGNORE_INDEX for i in starts)


# ----------------------------------------------------------------------------- scores


def test_rouge_l_and_exact_match():
    assert lcs_length("a b c d".split(), "a c d".split()) == 3
    # LCS "the cat on the mat" = 5 tokens; P = 5/6, R = 5/5.
    assert rouge_l("The cat sat on the mat.", "the cat on the mat") == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert rouge_l("paris", "madrid") == 0.0 and rouge_l("", "x") == 0.0
    assert exact_match("Paris. ", "paris") and not exact_match("Paris is", "paris")
    scores = generation_scores(["paris .", "rome"], ["paris", "madrid"])
    assert scores["exact_match"] == 0.5 and scores["rouge_l"] == 0.5


# ----------------------------------------------------------------------------- recipes and runs


def test_recipe_checks(tmp_path, tiny_llama):
    recipe = write_sft_job(tmp_path, tiny_llama, method="adapter")
    code, _, err = run_cli("validate", str(recipe))
    assert code == 1 and "not supported yet for task sft" in err
    code, _, err = run_cli("validate", str(recipe), "--set", "method.name=lora", "--set",
                           "generative.instruction_colum=x")
    assert code == 1 and "did you mean 'instruction_column'" in err
    code, _, err = run_cli("validate", str(recipe), "--set", "method.name=lora", "--set",
                           "generative.output_column=answer")
    assert code == 1 and "no column 'answer'" in err
    code, out, _ = run_cli("validate", str(recipe), "--set", "method.name=lora")
    assert code == 0 and "task sft" in out


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "prefix", "prompt"])
def test_each_method_fine_tunes_the_decoder(tmp_path, tiny_llama, method):
    learning_rate = {"full": 0.01, "freeze": 0.05, "lora": 0.02, "prefix": 0.05, "prompt": 0.1}[method]
    recipe = write_sft_job(tmp_path, tiny_llama, method=method, epochs=2, learning_rate=learning_rate)
    code, _, err = run_cli("train", str(recipe), "--output", str(tmp_path / "run"))
    assert code == 0, err
    run = tmp_path / "run"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "completed"
    assert json.loads((run / "save_check.json").read_text())["passed"]
    gate = json.loads((run / "artifacts.json").read_text())["artifacts"]["run"]  # read back as `generate` does
    assert gate["passed"] and gate["method"] == method and gate["probe"]["max_abs_logit_diff"] <= 1e-3
    assert gate["probe"]["reloaded_with"].startswith("LanguageModelTask.load_trained")
    weights = "model/model.safetensors" if method in ("full", "freeze", "lora") else "base/model.safetensors"
    assert weights in {f["path"] for f in gate["files"]}  # prefix / prompt: base + adapter, both recorded
    assert status["validation"]["loss"] < status["base_validation"]["loss"]  # it learned something
    samples = [json.loads(line) for line in (run / "eval" / "test" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 14 and "sampled" in samples[0] and samples[0]["decoding"]["sampled"]["do_sample"]
    assert (run / "eval" / "base" / "samples.jsonl").is_file()
    code, out, err = run_cli("generate", str(run), "--prompt", "say hello", "--max-new-tokens", "3")
    assert code == 0, err


def test_sft_learns_answers_merges_lora_and_generates(tmp_path, tiny_llama):
    recipe = write_sft_job(tmp_path, tiny_llama, method="full", epochs=12, learning_rate=0.02,
                           extra="  packing: true\n")
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(recipe), "--output", str(run), "--set", "train.gradient_checkpointing=true",
                           "--set", "train.batch_size=4")
    assert code == 0, err
    test = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    base = json.loads((run / "eval" / "base" / "metrics.json").read_text())
    assert base["rouge_l"] < 0.1 and test["rouge_l"] > 0.4  # measured: 0.0 -> 0.64
    assert "packed into" in err

    # model/ is a plain transformers model that pipeline() loads.
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(run / "model"))
    assert isinstance(generator("say hello", max_new_tokens=2)[0]["generated_text"], str)

    questions = tmp_path / "questions.jsonl"
    write_jsonl(questions, [{"instruction": "add one"}, {"instruction": "what is the capital of italy ?"}])
    code, _, err = run_cli("generate", str(run), "--input", str(questions), "--output", str(tmp_path / "out.jsonl"))
    assert code == 0, err
    answers = [json.loads(line)["generated"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and exact_match(answers[0], "two .")  # "add ..." is learned every time
    code, _, err = run_cli("generate", str(run), "--input", str(questions), "--output", str(tmp_path / "out.jsonl"))
    assert code == 1 and "never overwrites" in err


def test_lora_merges_into_a_plain_causal_lm(tmp_path, tiny_llama):
    recipe = write_sft_job(tmp_path, tiny_llama, method="lora", epochs=1)
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(recipe), "--output", str(run), "--set", "generative.generation.prompts=0",
                           "--set", "generative.generation.evaluate_base=false")
    assert code == 0, err
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and (run / "adapter").is_dir()
    from transformers import AutoModelForCausalLM

    assert not any("lora" in name for name, _ in AutoModelForCausalLM.from_pretrained(run / "model").named_parameters())


def test_integrity_gate_fails_a_run_whose_saved_language_model_is_broken(tmp_path, tiny_llama, monkeypatch):
    from safetensors.torch import load_file, save_file

    from tuneforge.core.methods.registry import Method

    broken = "model.layers.1.mlp.down_proj.weight"
    original = Method.save

    def broken_save(self, model, run_dir):  # as a buggy saver would: a weight changed in the written file
        saved = original(self, model, run_dir)
        path = run_dir / "model" / "model.safetensors"
        tensors = load_file(str(path))
        tensors[broken] = tensors[broken] * -3.0
        save_file(tensors, str(path), metadata={"format": "pt"})
        return saved

    monkeypatch.setattr(Method, "save", broken_save)
    recipe = write_sft_job(tmp_path, tiny_llama, method="full", epochs=1)
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(recipe), "--output", str(run), "--set", "generative.generation.prompts=0",
                           "--set", "generative.generation.evaluate_base=false")
    assert code == 1 and "the saved model does not answer as the trained model did" in err
    assert f"Weights that differ after reloading: {broken} (max |Δ|" in err
    gate = json.loads((run / "artifacts.json").read_text())["artifacts"]["run"]
    assert not gate["passed"] and (run / "rescue" / "in_memory_state.safetensors").is_file()
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


def test_causal_lm_on_raw_text_blocks(tmp_path, tiny_llama):
    write_domain_text(tmp_path / "domain.txt", 80)
    recipe = write_language_model_job(tmp_path / "recipe.yaml", tiny_llama, "causal-lm", "domain.txt")
    code, _, err = run_cli("train", str(recipe), "--output", str(tmp_path / "run"))
    assert code == 0, err
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["validation"]["perplexity"] < status["base_validation"]["perplexity"]
    assert status["data"]["train"]["rows"] < status["data"]["train"]["examples"]  # texts were packed into blocks


def test_masked_lm_output_is_the_model_of_a_classification_recipe(tmp_path):
    bert = make_tiny_bert(tmp_path / "bert")
    write_jsonl(tmp_path / "unlabelled.jsonl", [{"text": row["text"]} for row in synthetic_rows(200, seed=5)])
    recipe = write_language_model_job(tmp_path / "mlm.yaml", bert, "masked-lm", "unlabelled.jsonl", max_length=24,
                                      batch_size=16, learning_rate=0.005)
    code, _, err = run_cli("train", str(recipe), "--output", str(tmp_path / "mlm"))
    assert code == 0, err
    status = json.loads((tmp_path / "mlm" / "run.json").read_text())
    assert status["validation"]["loss"] < status["base_validation"]["loss"]
    gate = json.loads((tmp_path / "mlm" / "artifacts.json").read_text())["artifacts"]["run"]
    assert gate["passed"] and "masked positions" in gate["probe"]["compared"]
    assert "model/carried_weights.json" in {f["path"] for f in gate["files"]}  # the pooler, carried before the check

    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(120, seed=1))
    (tmp_path / "cls.yaml").write_text(f"""name: tiny-cls
model: {tmp_path / 'mlm' / 'model'}
data: {{train: train.jsonl, max_length: 24}}
method: {{name: full}}
train: {{epochs: 1, batch_size: 16, num_threads: 1}}
""", encoding="utf-8")
    code, _, err = run_cli("train", str(tmp_path / "cls.yaml"), "--output", str(tmp_path / "cls"))
    assert code == 0, err
    # What is checked here is that the masked-LM output loads and trains as a classifier's body; one epoch at the
    # default learning rate teaches this tiny model nothing, which the learning guard rightly reports.
    assert json.loads((tmp_path / "cls" / "run.json").read_text())["status"].startswith("completed")


def test_gguf_conversion_is_cached_by_file_hash(tmp_path, monkeypatch, tiny_llama):
    import tuneforge.base.gguf_cache as gguf_cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TUNEFORGE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_load(path):  # stands in for the slow de-quantizing GGUF reader
        calls.append(path)
        return AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)

    monkeypatch.setattr(gguf_cache, "_load_gguf", fake_load)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF fake bytes")
    first = gguf_cache.converted_folder(gguf)
    second = gguf_cache.converted_folder(gguf)
    assert first == second and len(calls) == 1 and (first / "model.safetensors").is_file()
    assert first.name == gguf_cache.file_sha256(gguf)[:32]
    gguf.write_bytes(b"GGUF other bytes")  # another file: another folder
    assert gguf_cache.converted_folder(gguf) != first and len(calls) == 2
