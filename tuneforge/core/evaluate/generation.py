"""Generating text with a language model and scoring it against references: exact match and ROUGE-L
(longest common subsequence F1).

:func:`generate` decodes tokenized prompts (greedy or sampled); :func:`evaluate_generations` answers held-out
prompts, writes ``samples.jsonl`` and scores the greedy answers.

ROUGE-L follows Lin (2004) with the tokenization of Google's ``rouge-score`` package (lowercase, every run
of characters other than a-z and 0-9 is a separator, no stemming): F = (1 + b^2) P R / (R + b^2 P) with
b = 1, P = LCS / candidate tokens, R = LCS / reference tokens.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneforge.base.recipe import Recipe
from tuneforge.core.data.generative import prompt_ids

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """Lowercased alphanumeric tokens."""
    return [token for token in _NON_ALPHANUMERIC.split(text.lower()) if token]


def lcs_length(first: list[str], second: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, two rows)."""
    if not first or not second:
        return 0
    previous = [0] * (len(second) + 1)
    for item in first:
        current = [0]
        for j, other in enumerate(second):
            current.append(previous[j] + 1 if item == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of one candidate against one reference (0 when either has no tokens)."""
    candidate_tokens, reference_tokens = rouge_tokens(candidate), rouge_tokens(reference)
    common = lcs_length(candidate_tokens, reference_tokens)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate_tokens), common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def normalise_answer(text: str) -> str:
    """Whitespace-collapsed, lowercased, without trailing punctuation: what exact match compares."""
    return " ".join(text.lower().split()).rstrip(" .!?")


def exact_match(candidate: str, reference: str) -> bool:
    return normalise_answer(candidate) == normalise_answer(reference)


def generation_scores(candidates: list[str], references: list[str]) -> dict[str, float]:
    """Mean exact match and ROUGE-L F1 over pairs."""
    if not candidates:
        return {"exact_match": float("nan"), "rouge_l": float("nan"), "n_examples": 0}
    return {"exact_match": sum(map(exact_match, candidates, references)) / len(candidates),
            "rouge_l": sum(map(rouge_l, candidates, references)) / len(candidates),
            "n_examples": len(candidates)}


def generation_model_uses_cache(model: nn.Module) -> bool:
    """Our prefix tuning cannot extend a filled key/value cache; such a model generates without one."""
    return not hasattr(model, "tf_prefix") and not hasattr(getattr(model, "base_model", None), "tf_prefix")


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
             device: torch.device, sample: dict[str, Any] | None = None, seed: int = 0) -> list[str]:
    """Continuations of tokenized prompts (left-padded batches); greedy unless ``sample`` gives
    temperature/top_p/top_k. Decoded without special tokens, stripped."""
    model.eval()
    outputs: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    pad_id = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    settings = {"do_sample": False} if sample is None else {"do_sample": True, **sample}
    if sample is not None:
        torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            ids[row, width - len(prompts[index]):] = torch.tensor(prompts[index])
            mask[row, width - len(prompts[index]):] = 1
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos,
                                   use_cache=generation_model_uses_cache(model), **settings)
        for row, index in enumerate(chunk):
            outputs[index] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
    return outputs


def decoding_settings(recipe: Recipe) -> dict[str, dict[str, Any]]:
    generation = recipe.generative.generation
    return {"greedy": {"do_sample": False, "max_new_tokens": generation.max_new_tokens},
            "sampled": {"do_sample": True, "temperature": generation.temperature, "top_p": generation.top_p,
                        "top_k": generation.top_k, "max_new_tokens": generation.max_new_tokens,
                        "seed": generation.seed}}


def evaluate_generations(model: nn.Module, tokenizer, recipe: Recipe, conversations: list[list[dict[str, str]]],
                         device: torch.device, folder: Path, log, label: str) -> dict[str, Any]:
    """Greedy (and for the first ``sampled_prompts``, sampled) answers to held-out prompts, scored against
    the reference answers; writes ``folder/samples.jsonl``. Returns exact match and ROUGE-L of greedy."""
    generation = recipe.generative.generation
    conversations = conversations[:generation.prompts]
    if not conversations:
        return {}
    prompts = [prompt_ids(tokenizer, conversation[:-1], recipe.generative) for conversation in conversations]
    references = [conversation[-1]["content"] for conversation in conversations]
    started = time.perf_counter()
    greedy = generate(model, tokenizer, prompts, generation.max_new_tokens, generation.batch_size, device)
    sampled_count = min(generation.sampled_prompts, len(prompts))
    sample_settings = {"temperature": generation.temperature, "top_p": generation.top_p, "top_k": generation.top_k}
    sampled = generate(model, tokenizer, prompts[:sampled_count], generation.max_new_tokens, generation.batch_size,
                       device, sample=sample_settings, seed=generation.seed) if sampled_count else []
    seconds = time.perf_counter() - started
    settings = decoding_settings(recipe)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "samples.jsonl").open("w", encoding="utf-8") as stream:
        for index, conversation in enumerate(conversations):
            record = {"prompt": conversation[:-1], "reference": references[index], "greedy": greedy[index],
                      "exact_match": exact_match(greedy[index], references[index]),
                      "rouge_l": round(rouge_l(greedy[index], references[index]), 6),
                      "decoding": {"greedy": settings["greedy"]}}
            if index < sampled_count:
                record["sampled"] = sampled[index]
                record["decoding"]["sampled"] = settings["sampled"]
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    scores = generation_scores(greedy, references)
    scores.update(decoding=settings, sampled_prompts=sampled_count, generation_seconds=round(seconds, 1))
    log(f"{label}: greedy answers to {len(prompts)} prompts: exact match {scores['exact_match']:.4f}, "
        f"ROUGE-L {scores['rouge_l']:.4f} ({seconds:.0f}s); {folder / 'samples.jsonl'}")
    return scores
