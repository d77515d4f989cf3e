"""A tiny random Llama with a real ChatML chat template and a word-level tokenizer, built from a config in
the test (no downloads), and instruction data it can learn in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = ["system", "user", "assistant", "what", "is", "the", "capital", "of", "france", "paris", "spain", "madrid",
         "italy", "rome", "say", "hello", "hi", "yes", "no", "add", "one", "two", "three", "four", "?", ".", ",",
         "be", "brief", "ok"]
QUESTIONS = [("what is the capital of france ?", "paris ."), ("what is the capital of spain ?", "madrid ."),
             ("what is the capital of italy ?", "rome ."), ("say hello", "hello ."), ("add one", "two ."),
             ("add two", "three ."), ("add three", "four .")]


def make_tiny_llama(folder: Path, layers: int = 2, hidden: int = 32) -> Path:
    """Save a randomly initialised LlamaForCausalLM and its ChatML tokenizer to ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {word: index for index, word in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def instruct_rows(count: int, seed: int) -> list[dict]:
    """Alpaca-style rows drawn from a few fixed question/answer pairs."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        question, answer = rng.choice(QUESTIONS)
        rows.append({"instruction": question, "input": "", "output": answer})
    return rows


def write_sft_job(folder: Path, model: Path, method: str = "lora", extra: str = "", epochs: int = 4,
                  learning_rate: float = 0.01) -> Path:
    """Train/dev/test files and a recipe for task sft on the tiny Llama; returns the recipe path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", 140, 1), ("dev", 14, 2), ("test", 14, 3)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in instruct_rows(count, seed)),
                                              encoding="utf-8")
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""name: tiny-sft
model: {model}
task: sft
data: {{train: train.jsonl, validation: dev.jsonl, test: test.jsonl, max_length: 64}}
method: {{name: {method}}}
train: {{epochs: {epochs}, batch_size: 8, learning_rate: {learning_rate}, warmup_ratio: 0.0, num_threads: 1,
        early_stopping: null}}
generative:
  generation: {{max_new_tokens: 4, sampled_prompts: 2}}
{extra}""", encoding="utf-8")
    return recipe


def write_domain_text(path: Path, count: int, seed: int = 4) -> Path:
    """Raw "domain" text for causal-lm: ``count`` paragraphs, each an instruction and its answer as one line."""
    path.write_text("\n\n".join(" ".join(row["instruction"].split() + row["output"].split())
                                 for row in instruct_rows(count, seed)), encoding="utf-8")
    return path


def write_language_model_job(recipe: Path, model: Path, task: str, train: str, method: str = "full",
                             max_length: int = 32, epochs: int = 2, batch_size: int = 8,
                             learning_rate: float = 0.01) -> Path:
    """A causal-lm or masked-lm recipe at ``recipe`` on ``train`` (a file beside it); returns its path."""
    name = {"causal-lm": "tiny-clm", "masked-lm": "tiny-mlm"}[task]
    recipe.write_text(f"""name: {name}
model: {model}
task: {task}
data: {{train: {train}, max_length: {max_length}}}
method: {{name: {method}}}
train: {{epochs: {epochs}, batch_size: {batch_size}, learning_rate: {learning_rate}, warmup_ratio: 0.0, num_threads: 1}}
""", encoding="utf-8")
    return recipe
