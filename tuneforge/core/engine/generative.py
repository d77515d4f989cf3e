"""Generative fine-tuning, read top to bottom: ``task: sft``, ``causal-lm`` and ``masked-lm``.

One recipe, one run folder, like classification (:mod:`tuneforge.core.engine.loop`), with the same optimizer,
schedules, runtime, method registry and run-folder rules; what differs is the data (prompt-masked
conversations, packed blocks, masked tokens), the loss (the model's own token cross-entropy) and the
evaluation: validation loss and perplexity every epoch (and of the untrained model, epoch 0), then on the
test split perplexity and generations from held-out prompts (greedy and sampled, with the decoding
settings) scored by exact match and ROUGE-L against the reference answers, into ``eval/``.

``model/`` ends as a plain transformers model (LoRA merged) that ``pipeline("text-generation")`` loads, or
base + adapter for prefix and prompt tuning, which :func:`load_generative_run` rebuilds.
"""

from __future__ import annotations

import json
import math
import random
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tuneforge.base.recipe import GENERATIVE_TASKS, Recipe, dump_recipe
from tuneforge.core.recipe import load_recipe
from tuneforge.core.data.batching import length_grouped_batches, shuffled_batches, sorted_batches
from tuneforge.core.data.generative import (EncodedExamples, GenerativeData, cell_text, collate, encode_causal_blocks,
                                       encode_masked, encode_sft, load_generative_data, pack, prompt_ids)
from tuneforge.base.errors import UserError
from tuneforge.core.evaluate.generation import exact_match, generation_scores, rouge_l
from tuneforge.core.methods import Method, build_method
from tuneforge.core.methods.layout import has_plain_model
from tuneforge.base.models import load_model_config, load_tokenizer, resolve_model
from tuneforge.base.quiet import quiet_transformers
from tuneforge.base.runfolder import RunStatus, new_run_dir
from tuneforge.base.atomic import append_jsonl
from tuneforge.base.atomic import write_json_atomic
from tuneforge.core.engine.checkpoint import keep_best_epoch, snapshot_trainable
from tuneforge.core.engine.optim import build_optimizer, build_scheduler, take_optimizer_step
from tuneforge.core.engine.runtime import Runtime, resolve_precision, setup_runtime

# Methods checked on decoders and masked LMs (tests/test_generative.py); the others are refused, not guessed.
GENERATIVE_METHODS = {"sft": ("full", "freeze", "lora", "dora", "prefix", "prompt"),
                      "causal-lm": ("full", "freeze", "lora", "dora", "prefix", "prompt"),
                      "masked-lm": ("full", "freeze", "lora", "dora")}
# The integrity gate's probe: the first validation rows, and at most this many of their token positions
# (each compares a whole vocabulary of logits: 512 x 49,152 for SmolLM2).
PROBE_ROWS = 4
PROBE_MAX_TOKENS = 512


@dataclass
class GenerativeJob:
    recipe: Recipe
    data: GenerativeData
    model_config: Any


# ----------------------------------------------------------------------------- validation


def validate_generative_job(recipe_path: str | Path, overrides: list[str] | None = None) -> GenerativeJob:
    """Every check that needs no weights: recipe keys, method/task fit, data files and columns, model type."""
    recipe = load_recipe(recipe_path, overrides)
    return check_generative_recipe(recipe)


def check_generative_recipe(recipe: Recipe) -> GenerativeJob:
    if recipe.task not in GENERATIVE_TASKS:
        raise UserError(f"task {recipe.task}: not a generative task ({', '.join(GENERATIVE_TASKS)})")
    allowed = GENERATIVE_METHODS[recipe.task]
    if recipe.method.name not in allowed:
        raise UserError(f"method.name: {recipe.method.name} is not supported yet for task {recipe.task}; "
                        f"choose one of {', '.join(allowed)}")
    if recipe.generative.packing and recipe.method.name in ("prefix", "prompt"):
        raise UserError(f"generative.packing: not supported yet with method {recipe.method.name} (its virtual "
                        "tokens would be shared across the packed examples); set packing: false")
    resolve_precision(recipe.train.precision, torch.cuda.is_available())
    data = load_generative_data(recipe)
    model_config = load_model_config(recipe.model)
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    mapping = MODEL_FOR_MASKED_LM_MAPPING_NAMES if recipe.task == "masked-lm" else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if model_config.model_type not in mapping:
        kind = "a masked language model (BERT family)" if recipe.task == "masked-lm" else "a decoder (causal LM)"
        raise UserError(f"model {recipe.model} ({model_config.model_type}) cannot be trained as task {recipe.task}: "
                        f"it needs {kind}")
    return GenerativeJob(recipe=recipe, data=data, model_config=model_config)


# ----------------------------------------------------------------------------- model and data


def load_generative_model(recipe: Recipe, source: str | None = None):
    """Tokenizer (with a pad token) and the language model of the recipe's task."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    source = source or resolve_model(recipe.model)
    tokenizer = load_tokenizer(source)
    auto = AutoModelForMaskedLM if recipe.task == "masked-lm" else AutoModelForCausalLM
    with quiet_transformers():  # a masked-LM head missing from an encoder checkpoint is expected
        model = auto.from_pretrained(source)
    if recipe.train.dropout is not None:
        for key in ("attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob"):
            if isinstance(getattr(model.config, key, None), float):
                setattr(model.config, key, recipe.train.dropout)
    return tokenizer, model


def encode_for_task(recipe: Recipe, tokenizer, split) -> EncodedExamples:
    """A split as training rows of the recipe's task (prompt-masked, packed, blocked or plain)."""
    max_length = recipe.data.max_length
    if recipe.task == "sft":
        encoded = encode_sft(tokenizer, split, recipe.generative, max_length)
        return pack(encoded, max_length) if recipe.generative.packing else encoded
    if recipe.task == "causal-lm":
        return encode_causal_blocks(tokenizer, split, max_length)
    return encode_masked(tokenizer, split, max_length)


class Batches:
    """Turns row indices into model inputs; masked-lm masks tokens (15% by default) with transformers'
    DataCollatorForLanguageModeling, freshly every training epoch and identically every validation pass."""

    def __init__(self, recipe: Recipe, tokenizer) -> None:
        self.pad_id = tokenizer.pad_token_id
        self.masker = None
        if recipe.task == "masked-lm":
            from transformers import DataCollatorForLanguageModeling

            self.masker = DataCollatorForLanguageModeling(tokenizer, mlm=True,
                                                          mlm_probability=recipe.generative.mlm_probability,
                                                          return_tensors="pt")

    def make(self, encoded: EncodedExamples, indices: list[int]) -> dict[str, torch.Tensor]:
        if self.masker is None:
            return collate(encoded, indices, self.pad_id)
        return self.masker([{"input_ids": encoded.input_ids[i]} for i in indices])


@torch.no_grad()
def evaluate_loss(model: nn.Module, encoded: EncodedExamples, batches: Batches, batch_size: int,
                  device: torch.device, autocast_dtype, causal: bool) -> dict[str, float]:
    """Mean token loss over the split's targets and its perplexity exp(loss)."""
    if len(encoded) == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "tokens": 0}
    was_training = model.training
    model.eval()
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)  # masked-lm: the same masked positions at every validation pass
    total, tokens = 0.0, 0
    try:
        for indices in sorted_batches(encoded.lengths, batch_size):
            batch = {k: v.to(device) for k, v in batches.make(encoded, indices).items()}
            count = int((batch["labels"][:, 1:] != -100).sum()) if causal else int((batch["labels"] != -100).sum())
            if count == 0:
                continue
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = model(**batch).loss
            total += float(loss) * count
            tokens += count
    finally:
        torch.random.set_rng_state(state)
        model.train(was_training)
    mean = total / max(tokens, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": tokens}


# ----------------------------------------------------------------------------- generation


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


# ----------------------------------------------------------------------------- training


@dataclass
class GenerativeResult:
    model: nn.Module
    tokenizer: Any
    runtime: Runtime
    best_epoch: int
    best_validation: dict[str, float]
    base_validation: dict[str, float] | None
    trainable_params: int
    total_params: int
    data_counts: dict[str, Any]
    model_load_seconds: float


def train_generative(recipe: Recipe, data: GenerativeData, run_dir: Path, log=print) -> GenerativeResult:
    """Fine-tune the recipe's language model on ``data``; save it into ``run_dir``."""
    config = recipe.train
    runtime = setup_runtime(config)
    device = runtime.device
    causal = recipe.task != "masked-lm"

    # --- model, method, data -------------------------------------------------------------------------
    started = time.perf_counter()
    tokenizer, model = load_generative_model(recipe)
    load_seconds = time.perf_counter() - started
    train_set = encode_for_task(recipe, tokenizer, data.train)
    validation_set = encode_for_task(recipe, tokenizer, data.validation)
    counts = data_counts(recipe, {"train": train_set, "validation": validation_set})
    for note in counts["notes"]:
        log(f"note: {note}")
    if len(train_set) == 0:
        raise UserError(f"{recipe.data.train}: no training example is left after tokenization (see the notes above)")
    batches = Batches(recipe, tokenizer)
    eval_batch_size = config.eval_batch_size or 2 * config.batch_size
    base_validation = None
    if recipe.generative.generation.evaluate_base:
        model.to(device)
        base_validation = evaluate_loss(model, validation_set, batches, eval_batch_size, device,
                                        runtime.autocast_dtype, causal)
        log(f"base model: validation loss {base_validation['loss']:.4f}, perplexity "
            f"{base_validation['perplexity']:.2f} ({base_validation['tokens']} target tokens)")
        append_jsonl(run_dir / "metrics.jsonl", {"step": 0, "epoch": 0, **{f"validation_{k}": v for k, v in
                                                                            base_validation.items()}})
    if recipe.task == "sft" and recipe.generative.generation.evaluate_base and data.test is not None:
        model.to(device)
        evaluate_generations(model, tokenizer, recipe, data.test.conversations, device, run_dir / "eval" / "base",
                             log, "base model, test")

    method: Method = build_method(recipe.method)
    model.config.use_cache = False  # training never reuses keys/values; checkpointing needs it off
    model = method.prepare(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"model {recipe.model} ({load_seconds:.1f}s to load): {total:,} parameters, {trainable:,} trainable "
        f"({100 * trainable / total:.2f}%) with method '{recipe.method.name}'; task {recipe.task}; "
        f"device {device.type}, {runtime.precision_name}, {runtime.threads} threads")

    # --- optimisation --------------------------------------------------------------------------------
    optimizer = build_optimizer(model, method.optimizer_parameters(model), config)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / config.batch_size) / config.grad_accum_steps)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch * config.epochs)
    batch_order = random.Random(config.seed)
    metrics_path = run_dir / "metrics.jsonl"
    best_loss, best_epoch, best_validation, best_state = None, -1, {}, None
    epochs_without_improvement = 0
    patience = config.early_stopping.patience if config.early_stopping else None
    optimizer_step = 0
    deadline = time.perf_counter() + 60 * config.time_budget_minutes if config.time_budget_minutes else None
    out_of_time = False

    for epoch in range(config.epochs):
        model.train()
        message = method.on_epoch_start(model, epoch)
        if message:
            log(message)
        order = (length_grouped_batches(train_set.lengths, config.batch_size, batch_order)
                 if config.group_by_length else shuffled_batches(len(train_set), config.batch_size, batch_order))
        progress = tqdm(order, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                        dynamic_ncols=True, disable=None)
        epoch_start, seen, running_loss, running_count = time.perf_counter(), 0, 0.0, 0
        for batch_index, indices in enumerate(progress):
            batch = {key: value.to(device) for key, value in batches.make(train_set, indices).items()}
            with torch.autocast(device.type, dtype=runtime.autocast_dtype, enabled=runtime.autocast_dtype is not None):
                loss = model(**batch).loss  # the model's own shifted token cross-entropy over labels != -100
            (loss / config.grad_accum_steps).backward()
            seen += len(indices)
            running_loss += float(loss) * len(indices)
            running_count += len(indices)
            is_last = batch_index == len(order) - 1
            if (batch_index + 1) % config.grad_accum_steps == 0 or is_last:
                take_optimizer_step(optimizer, scheduler, method, model, config.max_grad_norm, optimizer_step + 1,
                                    steps_per_epoch * config.epochs)
                optimizer_step += 1
                if deadline is not None and time.perf_counter() > deadline:
                    out_of_time = True
                if optimizer_step % config.log_every_steps == 0 and running_count:
                    append_jsonl(metrics_path, {"step": optimizer_step,
                                                "epoch": epoch + (batch_index + 1) / len(order),
                                                "loss": running_loss / running_count, "lr": scheduler.get_last_lr()[0],
                                                "samples_per_s": seen / max(time.perf_counter() - epoch_start, 1e-9)})
                    running_loss, running_count = 0.0, 0
            progress.set_postfix(loss=f"{float(loss):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if out_of_time:
                break
        progress.close()
        train_seconds = time.perf_counter() - epoch_start

        # --- validation: loss and perplexity; the best epoch (lowest loss) is kept ------------------------
        validation = evaluate_loss(model, validation_set, batches, eval_batch_size, device, runtime.autocast_dtype,
                                   causal)
        record = {"step": optimizer_step, "epoch": epoch + 1, "lr": scheduler.get_last_lr()[0],
                  "samples_per_s": seen / train_seconds, "train_seconds": train_seconds,
                  **{f"validation_{k}": v for k, v in validation.items()}}
        if out_of_time:
            record["time_budget_reached"] = True
        append_jsonl(metrics_path, record)
        log(f"epoch {epoch + 1}/{config.epochs}: validation loss {validation['loss']:.4f}, perplexity "
            f"{validation['perplexity']:.2f} ({train_seconds:.0f}s, {record['samples_per_s']:.2f} rows/s)")
        if best_loss is None or validation["loss"] < best_loss:
            best_loss, best_epoch, best_validation = validation["loss"], epoch + 1, validation
            best_state = snapshot_trainable(method, model)
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
            if patience is not None and epochs_without_improvement >= patience:
                log(f"early stopping: validation loss has not improved for {patience} epoch(s); keeping epoch "
                    f"{best_epoch}")
                break
        if out_of_time:
            log(f"time budget of {config.time_budget_minutes:g} min reached; keeping epoch {best_epoch}")
            break

    # --- keep the best epoch, save, reload and check -------------------------------------------------
    keep_best_epoch(model, best_state, config.gradient_checkpointing)
    saved = save_generative(method, model, tokenizer, recipe, run_dir, validation_set, batches, device)
    return GenerativeResult(model=saved, tokenizer=tokenizer, runtime=runtime, best_epoch=best_epoch,
                            best_validation=best_validation, base_validation=base_validation,
                            trainable_params=trainable, total_params=total, data_counts=counts,
                            model_load_seconds=round(load_seconds, 2))


def data_counts(recipe: Recipe, encoded: dict[str, EncodedExamples]) -> dict[str, Any]:
    """Rows, training rows, target tokens, truncated and dropped examples per split; notes for the log."""
    counts: dict[str, Any] = {"notes": []}
    for name, split in encoded.items():
        counts[name] = {"examples": split.examples, "rows": len(split), "target_tokens": split.target_tokens,
                        "truncated": split.truncated, "dropped": split.dropped}
        if split.truncated:
            counts["notes"].append(f"{name}: {split.truncated} of {split.examples} examples were longer than "
                                   f"data.max_length={recipe.data.max_length} tokens and were cut")
        if split.dropped:
            counts["notes"].append(f"{name}: {split.dropped} examples had no answer token left within "
                                   f"data.max_length and were left out")
        if split.position_ids is not None:
            counts["notes"].append(f"{name}: {split.examples - split.dropped} examples packed into {len(split)} rows "
                                   f"of up to {recipe.data.max_length} tokens")
    return counts


def save_generative(method: Method, model: nn.Module, tokenizer, recipe: Recipe, run_dir: Path,
                    probe_set: EncodedExamples, batches: Batches, device: torch.device) -> nn.Module:
    """Save through the method and pass the integrity gate shared with classification runs
    (:func:`tuneforge.base.integrity.save_and_gate`): the run folder read back as ``tuneforge generate`` reads it
    must give the trained model's token logits on a few encoded validation examples (``artifacts.json``).
    Returns the reloaded model, so that the test evaluation scores what is on disk."""
    from tuneforge.base.integrity import LANGUAGE_MODEL_TOLERANCE, save_and_gate

    rows = list(range(min(len(probe_set), PROBE_ROWS)))
    batch = {k: v.to(device) for k, v in batches.make(probe_set, rows).items()}
    positions, targets = probe_positions(batch, batch.pop("labels"), [len(probe_set.input_ids[i]) for i in rows],
                                         causal=recipe.task != "masked-lm")

    def carry_pooler() -> None:
        if recipe.task == "masked-lm" and has_plain_model(run_dir):
            carried = carry_unused_weights(Path(resolve_model(recipe.model)), run_dir / "model",
                                           getattr(model, "base_model_prefix", ""))
            if carried:
                write_json_atomic(run_dir / "model" / "carried_weights.json", carried)

    checked = save_and_gate(method, model, tokenizer, run_dir, batch, targets.cpu().numpy(),
                            outputs=lambda module, inputs: token_logits(module, inputs, positions),
                            reload=lambda: load_generative_run(run_dir, recipe),
                            reloaded_with="load_generative_run (as tuneforge generate loads it)",
                            after_save=carry_pooler, tolerance=LANGUAGE_MODEL_TOLERANCE,
                            max_metric_drop=recipe.export.max_metric_drop,
                            compared=f"token logits at {len(positions)} non-padding positions of {len(rows)} "
                                     f"validation rows; accuracy over the {int((targets >= 0).sum())} "
                                     + ("masked positions" if recipe.task == "masked-lm" else
                                        "positions whose next token is trained"))
    return checked.reloaded


def probe_positions(batch: dict[str, torch.Tensor], labels: torch.Tensor, lengths: list[int],
                    causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat indices of the probe batch's real (non-padding) token positions, at most
    ``PROBE_MAX_TOKENS``, and the token each of them is trained to predict (-100: none, e.g. a prompt token).
    ``lengths``: each row's token count, for packed rows (their 4-D block mask does not say where padding is)."""
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        real = mask.bool()
    else:  # collate pads packed rows on the right
        real = torch.zeros_like(labels, dtype=torch.bool)
        for row, length in enumerate(lengths):
            real[row, :length] = True
    # A causal LM's logits at position t predict the token at t + 1; a masked LM's predict the token at t.
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1) if causal else labels
    positions = real.flatten().nonzero().squeeze(1)[:PROBE_MAX_TOKENS]
    return positions, targets.flatten()[positions]


def token_logits(model: nn.Module, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """``[tokens, vocabulary]`` fp32 logits of ``model`` at the probe's flat token ``positions``."""
    logits = model(**batch).logits.float()
    logits = logits[:, -batch["input_ids"].shape[1]:]  # prompt tuning also returns logits for its virtual tokens
    return logits.reshape(-1, logits.shape[-1])[positions]


def carry_unused_weights(source: Path, model_dir: Path, prefix: str) -> list[str]:
    """Copy into ``model_dir/model.safetensors`` the source checkpoint's weights that the masked LM does not
    have (BERT's pooler: ``BertForMaskedLM`` drops it), so a classifier built from the run starts from the
    pretrained pooler as it would from the source model, not from a random one. Returns the keys added."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source_file, target_file = source / "model.safetensors", model_dir / "model.safetensors"
    if not (source_file.is_file() and target_file.is_file()):
        return []  # sharded or other formats: nothing is carried
    state = load_file(str(target_file))
    added = []
    with safe_open(str(source_file), "pt") as stream:
        for key in stream.keys():
            name = key if not prefix or key.startswith(f"{prefix}.") else f"{prefix}.{key}"
            if name not in state and ".pooler." in f".{name}":
                state[name] = stream.get_tensor(key)
                added.append(name)
    if added:
        save_file(state, str(target_file), metadata={"format": "pt"})
    return added


def load_generative_run(run_dir: Path, recipe: Recipe | None = None) -> nn.Module:
    """The trained model of a generative run folder in eval mode (plain model, or base + adapter)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from tuneforge.core.methods.registry import method_spec

    run_dir = Path(run_dir)
    recipe = recipe or load_recipe_of_run(run_dir)
    if has_plain_model(run_dir):
        auto = AutoModelForMaskedLM if recipe.task == "masked-lm" else AutoModelForCausalLM
        return auto.from_pretrained(run_dir / "model").eval()
    return method_spec(recipe.method.name).load(run_dir, recipe.method).eval()


def load_recipe_of_run(run_dir: Path) -> Recipe:
    from tuneforge.core.recipe import validate_recipe
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run folder (config.yaml is missing)")
    return validate_recipe(yaml.safe_load(path.read_text(encoding="utf-8")), source=path)


# ----------------------------------------------------------------------------- commands


def train_generative_command(recipe_path: str, overrides: list[str], output: str | None, log) -> int:
    """``tuneforge train`` for task sft / causal-lm / masked-lm: validate, train, evaluate, summarise."""
    from tuneforge import __version__

    job = validate_generative_job(recipe_path, overrides)
    recipe, data = job.recipe, job.data
    for note in data.notes:
        log(f"note: {note}")
    run_dir = new_run_dir(output, recipe.name)
    log(f"run folder: {run_dir}")
    dump_recipe(recipe, run_dir / "config.yaml")
    status = RunStatus(run_dir, name=recipe.name, task=recipe.task, model=recipe.model, method=recipe.method.name,
                       tuneforge_version=__version__,
                       rows={"train": len(data.train), "validation": len(data.validation),
                             "test": len(data.test) if data.test else 0})
    from tuneforge.base.manifest import start_manifest

    start_manifest(run_dir, recipe, recipe_path, overrides)  # closed by status.finish, as for classification
    try:
        result = train_generative(recipe, data, run_dir, log=log)
        status.update(trainable_params=result.trainable_params, total_params=result.total_params,
                      trainable_share=result.trainable_params / result.total_params, best_epoch=result.best_epoch,
                      precision=result.runtime.precision_name, data=result.data_counts,
                      validation=result.best_validation, base_validation=result.base_validation,
                      model_load_seconds=result.model_load_seconds)
        summary = {"validation": result.best_validation}
        if data.test is not None:
            summary["test"] = evaluate_test(recipe, data, result, run_dir, log)
            status.update(test=summary["test"])
    except KeyboardInterrupt:
        status.finish("interrupted")
        raise
    except BaseException as exc:
        status.finish("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise
    status.finish("completed")
    print(f"\nrun {run_dir} finished in {status.data['minutes']:.1f} min")
    for split, metrics in summary.items():
        values = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("loss", "perplexity", "exact_match", "rouge_l")
                           if isinstance(metrics.get(k), float))
        print(f"  {split:<10} {values}")
    if result.base_validation:
        print(f"  base model validation loss {result.base_validation['loss']:.4f}, "
              f"perplexity {result.base_validation['perplexity']:.2f}")
    return 0


def evaluate_test(recipe: Recipe, data: GenerativeData, result: GenerativeResult, run_dir: Path, log) -> dict:
    """Test loss and perplexity; for sft also generations and their scores; into ``eval/test/``."""
    device = result.runtime.device
    encoded = encode_for_task(recipe, result.tokenizer, data.test)
    batches = Batches(recipe, result.tokenizer)
    metrics: dict[str, Any] = evaluate_loss(result.model, encoded, batches, 2 * recipe.train.batch_size, device,
                                            result.runtime.autocast_dtype, recipe.task != "masked-lm")
    metrics.update(examples=encoded.examples, truncated=encoded.truncated, dropped=encoded.dropped)
    cut = f" ({encoded.truncated} of {encoded.examples} examples cut at data.max_length)" if encoded.truncated else ""
    log(f"test: loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.2f}{cut}")
    folder = run_dir / "eval" / "test"
    if recipe.task == "sft":
        metrics.update(evaluate_generations(result.model, result.tokenizer, recipe, data.test.conversations, device,
                                            folder, log, "fine-tuned model, test"))
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "metrics.json", metrics)
    base_file = run_dir / "eval" / "base" / "samples.jsonl"
    if base_file.is_file():
        records = [json.loads(line) for line in base_file.read_text(encoding="utf-8").splitlines()]
        base = generation_scores([r["greedy"] for r in records], [r["reference"] for r in records])
        write_json_atomic(run_dir / "eval" / "base" / "metrics.json", base)
        metrics["base_exact_match"], metrics["base_rouge_l"] = base["exact_match"], base["rouge_l"]
    return metrics


def generate_command(run_dir: str, prompt: str | None, input_file: str | None, output_file: str | None,
                     max_new_tokens: int | None, temperature: float, top_p: float | None, log) -> int:
    """``tuneforge generate RUN_DIR``: answer one prompt, or every row of a file (instruction/input columns
    of the run's recipe, a ``messages`` column, or a ``prompt`` column)."""
    from tuneforge.base.tables import SOURCE_ROW, read_table, write_table

    if (prompt is None) == (input_file is None):
        raise UserError("generate: give either --prompt \"...\" or --input FILE --output FILE")
    if input_file is not None and output_file is None:
        raise UserError("generate: --input needs --output FILE (CSV, TSV, JSON, JSONL or Parquet)")
    if output_file is not None and Path(output_file).exists():
        raise UserError(f"{output_file}: already exists; generate never overwrites a file, choose another --output")
    recipe = load_recipe_of_run(Path(run_dir))
    if recipe.task != "sft" and recipe.task != "causal-lm":
        raise UserError(f"{run_dir}: a {recipe.task} run does not generate text (generate needs task sft or causal-lm)")
    settings = recipe.generative
    model = load_generative_run(Path(run_dir), recipe)
    tokenizer = load_tokenizer(Path(run_dir) / "model")
    limit = max_new_tokens or settings.generation.max_new_tokens
    sample = ({"temperature": temperature, "top_p": top_p or settings.generation.top_p,
               "top_k": settings.generation.top_k} if temperature > 0 else None)
    system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []

    def to_ids(user_text: str, messages: list | None = None) -> list[int]:
        if recipe.task == "causal-lm":
            return list(tokenizer(user_text, add_special_tokens=True)["input_ids"])
        return prompt_ids(tokenizer, messages if messages is not None else
                          system + [{"role": "user", "content": user_text}], settings)

    device = next(model.parameters()).device
    if prompt is not None:
        if not prompt.strip():
            raise UserError("generate: --prompt is empty")
        print(generate(model, tokenizer, [to_ids(prompt)], limit, 1, device, sample, settings.generation.seed)[0])
        return 0
    frame = read_table(input_file)
    prompts = []
    for index in range(len(frame)):
        row = frame.iloc[index]
        if settings.messages_column and settings.messages_column in frame.columns:
            value = row[settings.messages_column]
            messages = json.loads(value) if isinstance(value, str) else list(value)
            if messages and messages[-1].get("role") == "assistant":
                messages = messages[:-1]
            prompts.append(to_ids("", [{"role": m["role"], "content": str(m["content"])} for m in messages]))
        elif settings.instruction_column in frame.columns:
            extra = cell_text(row.get(settings.input_column)) if settings.input_column else ""
            instruction = cell_text(row[settings.instruction_column])
            prompts.append(to_ids(f"{instruction}\n\n{extra}" if extra else instruction))
        elif "prompt" in frame.columns:
            prompts.append(to_ids(str(row["prompt"])))
        else:
            present = ", ".join(c for c in frame.columns if c != SOURCE_ROW)
            raise UserError(f"{input_file}: no column '{settings.instruction_column}' or 'prompt' to generate from; "
                            f"the file has: {present}")
    answers = generate(model, tokenizer, prompts, limit, settings.generation.batch_size, device, sample,
                       settings.generation.seed)
    result = frame.drop(columns=[SOURCE_ROW]).copy()
    result["generated"] = answers
    write_table(result, output_file)
    log(f"wrote {len(result)} generations to {output_file} "
        f"({'sampled, temperature ' + str(temperature) if sample else 'greedy'}, max {limit} new tokens)")
    return 0
