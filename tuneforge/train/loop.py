"""The training loop, readable top to bottom.

Supports: any registered method (the loop never branches on its name), warmup + linear/cosine/constant
schedules, discriminative and layer-wise learning rates, gradient accumulation
(effective batch = batch_size x grad_accum_steps), gradient clipping, fp32/bf16/fp16 (GradScaler on
CUDA), gradient checkpointing, class weights, early stopping on a validation metric (the best epoch's
weights are the ones saved), a tqdm bar per epoch, ``metrics.jsonl`` every ``log_every_steps`` and
every epoch.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tuneforge.anatomy import describe, frozen_blocks_to_eval
from tuneforge.config import Recipe
from tuneforge.data.batching import EncodedSplit, iterate_batches, length_grouped_batches, shuffled_batches
from tuneforge.data.encode_cache import encode_split_cached
from tuneforge.data.examples import ClassificationData
from tuneforge.evaluate import classification_metrics
from tuneforge.inference import predict_probabilities
from tuneforge.methods import Method, build_method
from tuneforge.models import resolve_model
from tuneforge.run import append_jsonl
from tuneforge.train.activation_cache import CachedPrefix, build_cache
from tuneforge.train.optim import build_optimizer, build_scheduler
from tuneforge.train.runtime import Runtime, setup_runtime

# Names under which transformers configs keep their dropout probabilities.
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout",
                "attention_dropout", "seq_classif_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop",
                "attn_pdrop", "summary_first_dropout")

MERGE_TOLERANCE = 1e-4


@dataclass
class TrainResult:
    """What a finished training hands back: the saved model, its tokenizer and the facts of the run."""

    model: nn.Module
    tokenizer: Any
    runtime: Runtime
    best_epoch: int
    best_metrics: dict[str, Any]
    trainable_params: int
    total_params: int
    stopped_early: bool


def load_classifier(recipe: Recipe, label_names: list[str]):
    """Tokenizer and a sequence-classification model with a fresh head for ``label_names``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = resolve_model(recipe.model)
    config = AutoConfig.from_pretrained(
        source, num_labels=len(label_names),
        id2label=dict(enumerate(label_names)), label2id={name: i for i, name in enumerate(label_names)})
    if recipe.train.dropout is not None:
        for key in DROPOUT_KEYS:
            if isinstance(getattr(config, key, None), float) or (key == "classifier_dropout" and hasattr(config, key)):
                setattr(config, key, recipe.train.dropout)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:  # decoder-only models (Llama, GPT-2) ship without one
        tokenizer.pad_token = tokenizer.eos_token
    config.pad_token_id = tokenizer.pad_token_id
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected: we train that head
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, config=config)
    finally:
        hf_logging.set_verbosity(verbosity)
    return tokenizer, model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def class_weight_tensor(recipe: Recipe, data: ClassificationData) -> torch.Tensor | None:
    """Per-class loss weights: none, balanced (n / (k * count)), or given by label name (default 1)."""
    setting = recipe.train.class_weights
    if setting == "none":
        return None
    if setting == "balanced":
        counts = np.bincount(data.train.labels, minlength=len(data.label_names)).astype(np.float64)
        return torch.tensor(len(data.train) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
    return torch.tensor([float(setting.get(name, 1.0)) for name in data.label_names], dtype=torch.float32)


def train(recipe: Recipe, data: ClassificationData, run_dir: Path, log=print) -> TrainResult:
    """Fine-tune the recipe's model on ``data`` and save it into ``run_dir``."""
    config = recipe.train
    runtime = setup_runtime(config)
    device = runtime.device

    # --- model, method, data -------------------------------------------------------------------------
    tokenizer, model = load_classifier(recipe, data.label_names)
    method: Method = build_method(recipe.method)
    model = method.prepare(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)
    trainable, total = count_parameters(model)
    log(f"model {recipe.model}: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%) "
        f"with method '{recipe.method.name}'; device {device.type}, {runtime.precision_name}, {runtime.threads} threads")

    train_set = encode_split_cached(tokenizer, data.train, recipe.data.max_length)
    validation_set = encode_split_cached(tokenizer, data.validation, recipe.data.max_length)
    pad_id = tokenizer.pad_token_id
    eval_batch_size = config.eval_batch_size or 2 * config.batch_size

    # --- frozen-prefix activation cache: the frozen bottom of the model runs once, not every epoch ------
    cache_context = ExitStack()
    prefix, train_cache, validation_cache = None, None, None
    depth = method.frozen_prefix_depth(describe(model).num_layers, config.epochs) if config.activation_cache else 0
    if depth:
        started = time.perf_counter()
        frozen_blocks_to_eval(model)
        train_cache = build_cache(model, depth, train_set, eval_batch_size, pad_id, device, run_dir / "cache", "train")
        validation_cache = build_cache(model, depth, validation_set, eval_batch_size, pad_id, device,
                                       run_dir / "cache", "validation")
        prefix = CachedPrefix(model, depth)
        cache_context.enter_context(prefix.active(train_cache.returns_tuple))
        log(f"activation cache: embeddings + bottom {depth} layer(s) computed once for "
            f"{len(train_set) + len(validation_set)} examples "
            f"({(train_cache.nbytes + validation_cache.nbytes) / 2**20:.0f} MiB, "
            f"{time.perf_counter() - started:.1f}s); training runs only the layers above")

    # --- optimisation --------------------------------------------------------------------------------
    optimizer = build_optimizer(model, method.optimizer_parameters(model), config)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / config.batch_size) / config.grad_accum_steps)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch * config.epochs)
    weights = class_weight_tensor(recipe, data)
    loss_fn = nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)
    eval_loss_fn = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type) if runtime.use_grad_scaler else None
    batch_order = random.Random(config.seed)

    stopping = config.early_stopping
    best_score, best_epoch, best_metrics, best_state = None, -1, {}, None
    epochs_without_improvement, stopped_early = 0, False
    metrics_path = run_dir / "metrics.jsonl"
    optimizer_step = 0
    # train.time_budget_minutes: checked after each optimizer step; the cut epoch is still validated.
    deadline = time.perf_counter() + 60 * config.time_budget_minutes if config.time_budget_minutes else None
    out_of_time = False

    for epoch in range(config.epochs):
        model.train()
        message = method.on_epoch_start(model, epoch)
        if message:
            log(message)
        frozen_blocks_to_eval(model)
        batches = (length_grouped_batches(train_set.lengths, config.batch_size, batch_order)
                   if config.group_by_length else shuffled_batches(len(train_set), config.batch_size, batch_order))
        progress = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                        dynamic_ncols=True, disable=None)  # None: a bar on a terminal, none in a log file
        epoch_start, seen, running_loss, running_count = time.perf_counter(), 0, 0.0, 0
        for batch_index, (indices, batch) in enumerate(zip(progress, iterate_batches(train_set, batches, pad_id))):
            labels = batch.pop("labels").to(device)
            inputs = {key: value.to(device) for key, value in batch.items()}
            if prefix:
                prefix.select(train_cache, indices)
            with torch.autocast(device.type, dtype=runtime.autocast_dtype, enabled=runtime.autocast_dtype is not None):
                logits = model(**inputs).logits
            loss = loss_fn(logits.float(), labels)
            scaled = loss / config.grad_accum_steps
            (scaler.scale(scaled) if scaler else scaled).backward()

            is_last = batch_index == len(batches) - 1
            if (batch_index + 1) % config.grad_accum_steps == 0 or is_last:
                if scaler:
                    scaler.unscale_(optimizer)
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]
                                                    if p.grad is not None], config.max_grad_norm)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                method.on_optimizer_step(model, optimizer_step + 1, steps_per_epoch * config.epochs)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                optimizer_step += 1
                if deadline is not None and time.perf_counter() > deadline:
                    out_of_time = True

            seen += len(indices)
            running_loss += loss.item() * len(indices)
            running_count += len(indices)
            samples_per_s = seen / max(time.perf_counter() - epoch_start, 1e-9)
            lr = scheduler.get_last_lr()[0]
            progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.1f}")
            if optimizer_step and optimizer_step % config.log_every_steps == 0 and (
                    (batch_index + 1) % config.grad_accum_steps == 0 or is_last):
                append_jsonl(metrics_path, {"step": optimizer_step, "epoch": epoch + (batch_index + 1) / len(batches),
                                            "loss": running_loss / running_count, "lr": lr,
                                            "samples_per_s": samples_per_s})
                running_loss, running_count = 0.0, 0
            if out_of_time:
                break
        progress.close()
        train_seconds = time.perf_counter() - epoch_start

        # --- validation, early stopping ---------------------------------------------------------------
        probabilities, validation_loss = predict_probabilities(
            model, validation_set, eval_batch_size, pad_id, device, eval_loss_fn, runtime.autocast_dtype,
            before_batch=(lambda batch_indices: prefix.select(validation_cache, batch_indices)) if prefix else None)
        metrics = classification_metrics(np.array(validation_set.labels), probabilities, data.label_names,
                                         per_class=False)
        metrics["loss"] = validation_loss
        record = {"step": optimizer_step, "epoch": epoch + 1, "lr": scheduler.get_last_lr()[0],
                  "samples_per_s": seen / train_seconds, "train_seconds": train_seconds,
                  **{f"validation_{k}": v for k, v in metrics.items()}}
        if out_of_time:
            record["time_budget_reached"] = True
        append_jsonl(metrics_path, record)
        log(f"epoch {epoch + 1}/{config.epochs}: validation loss {validation_loss:.4f}, accuracy "
            f"{metrics['accuracy']:.4f}, f1_macro {metrics['f1_macro']:.4f} "
            f"({train_seconds:.0f}s, {record['samples_per_s']:.1f} samples/s)")

        score = metrics[stopping.metric] if stopping else -validation_loss
        higher_is_better = stopping.higher_is_better if stopping else True
        improved = best_score is None or (score > best_score if higher_is_better else score < best_score)
        if improved or stopping is None:
            best_score, best_epoch, best_metrics = score, epoch + 1, metrics
            best_state = {name: p.detach().to("cpu", copy=True) for name, p in method.optimizer_parameters(model)}
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
            if epochs_without_improvement >= stopping.patience:
                log(f"early stopping: {stopping.metric} has not improved for {stopping.patience} epoch(s); "
                    f"keeping epoch {best_epoch}")
                stopped_early = True
                break
        if out_of_time:
            log(f"time budget of {config.time_budget_minutes:g} min reached after {optimizer_step} optimizer steps "
                f"(epoch {epoch + 1}); keeping epoch {best_epoch}")
            break

    # --- keep the best epoch and save it -------------------------------------------------------------
    cache_context.close()  # the model computes its full forward again from here on
    if best_state is not None:
        with torch.no_grad():
            parameters = dict(model.named_parameters())
            for name, value in best_state.items():
                parameters[name].copy_(value.to(parameters[name].device))
    if config.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    saved = save_model(method, model, tokenizer, run_dir, validation_set, pad_id, device)
    return TrainResult(model=saved, tokenizer=tokenizer, runtime=runtime, best_epoch=best_epoch,
                       best_metrics=best_metrics, trainable_params=trainable, total_params=total,
                       stopped_early=stopped_early)


def save_model(method: Method, model: nn.Module, tokenizer, run_dir: Path, probe_set: EncodedSplit,
               pad_id: int, device: torch.device) -> nn.Module:
    """Save through the method, then check the saved-for-deployment module answers as the trained one did."""
    probe = iterate_batches(probe_set, [list(range(min(len(probe_set), 32)))], pad_id)
    batch = {key: value.to(device) for key, value in next(probe).items() if key != "labels"}
    with torch.no_grad():
        before = model(**batch).logits.float()
    saved = method.save(model, run_dir)
    tokenizer.save_pretrained(run_dir / "model")
    with torch.no_grad():
        after = saved(**batch).logits.float()
    difference = float((before - after).abs().max())
    check = {"probe_examples": int(before.shape[0]), "max_abs_logit_difference": difference,
             "tolerance": MERGE_TOLERANCE, "passed": difference <= MERGE_TOLERANCE}
    (run_dir / "save_check.json").write_text(json.dumps(check, indent=2), encoding="utf-8")
    if not check["passed"]:
        raise RuntimeError(f"the saved model's logits differ from the trained model's by {difference:.2e} "
                           f"(> {MERGE_TOLERANCE}); see {run_dir / 'save_check.json'}")
    return saved
