"""The training loop, readable top to bottom: every task (classification, multilabel, image, multitask, sft,
causal-lm, masked-lm) and every method trains here.

Lines marked ``[task]`` ask the recipe's :class:`~tuneforge.core.tasks.base.Task` what differs between tasks
(model, encoding, batches, loss, metrics, saving); the loop never branches on a task's or a method's name.

Supports: any registered method, warmup + linear/cosine/constant
schedules, discriminative and layer-wise learning rates, gradient accumulation
(effective batch = batch_size x grad_accum_steps), gradient clipping, fp32/bf16/fp16 (GradScaler on
CUDA), gradient checkpointing, class weights, early stopping on a validation metric (the best epoch's
weights are the ones saved), a tqdm bar per epoch, ``metrics.jsonl`` every ``log_every_steps`` and
every epoch (also to TensorBoard / MLflow with ``report_to``).

Fault tolerance (:mod:`tuneforge.core.engine.checkpoint`): a checkpoint every ``checkpoint_every_steps`` optimizer
steps and every epoch, from which ``resume_from`` continues exactly (same batches, RNG, optimizer,
schedule, early stopping); a NaN/inf loss skips its step (``max_bad_steps``); Ctrl-C checkpoints and stops.
Under ``accelerate launch`` (:mod:`tuneforge.core.engine.distributed`) each process trains on its share of every
batch through DDP and rank 0 alone writes.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tuneforge.base.faults import fault_point
from tuneforge.base.phases import add_phase, phase
from tuneforge.base.recipe import Recipe
from tuneforge.core.anatomy import describe, frozen_blocks_to_eval
from tuneforge.core.engine.activation_cache import CachedPrefix, build_cache
from tuneforge.core.engine.checkpoint import (BadStepGuard, Checkpointer, LoopState, StopRequest, TrainingInterrupted,
                                              check_free_disk, keep_best_epoch, restore, snapshot_trainable,
                                              truncate_metrics)
from tuneforge.core.engine.distill import Distiller, shrink_student
from tuneforge.core.engine.distributed import distributed
from tuneforge.core.engine.hooks import LoopHooks
from tuneforge.core.engine.optim import build_optimizer, build_scheduler, take_optimizer_step
from tuneforge.core.engine.runtime import Runtime, setup_runtime
from tuneforge.core.engine.tracking import MetricsLog
from tuneforge.core.evaluate.learning_guard import judge_learning
from tuneforge.core.methods import Method, build_method
from tuneforge.core.tasks import task_for
from tuneforge.core.tasks.image import TEACHER_PIXELS


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
    # What the task measured beside training, for run.json (language models: the base model's validation loss,
    # token counts and truncation of each split).
    facts: dict[str, Any] = field(default_factory=dict)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def train(recipe: Recipe, data, run_dir: Path, log=print,
          on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None, resume_from: Path | None = None,
          stop: StopRequest | None = None, on_facts: Callable[[dict[str, Any]], None] | None = None,
          remove_checkpoints: bool = True, hooks: LoopHooks | None = None) -> TrainResult:
    """Fine-tune the recipe's model on ``data`` and save it into ``run_dir``.

    ``resume_from``: a checkpoint folder (:mod:`tuneforge.core.engine.checkpoint`) to continue from exactly.
    ``stop``: an installed Ctrl-C handler; when it fires the loop checkpoints and raises TrainingInterrupted.

    ``on_epoch_end(epoch, validation_metrics)`` (1-based epoch) runs after each validation; an exception it
    raises ends training there (``tuneforge search`` prunes trials this way). ``on_facts(facts)`` receives what the
    task measured before the first step (e.g. the base model's validation loss) as soon as it is known, so that
    ``run.json`` holds it even if the run is killed. ``remove_checkpoints`` False: the checkpoints outlive the
    saved model (``tuneforge train`` removes them once the test split is evaluated too, so that a run killed
    in between can still be resumed). ``hooks``: an extension's changes to the start model, the batches and the
    loss (:mod:`tuneforge.core.engine.hooks`; continual fine-tuning), default none."""
    config = recipe.train
    runtime = setup_runtime(config)
    dist = distributed()  # under `accelerate launch`: this process's rank; else a single process
    device = dist.device(runtime.device)

    # --- model, method, data -------------------------------------------------------------------------
    task = task_for(recipe.task)  # [task] what differs between classification, multilabel, images, language models
    loading = time.perf_counter()
    hooks = hooks or LoopHooks()  # [hooks] continual fine-tuning starts from a finished run's model instead
    tokenizer, model = hooks.load_model(task, recipe, data.label_names)  # [task] model + tokenizer / image processor
    facts: dict[str, Any] = {"model_load_seconds": round(time.perf_counter() - loading, 2)}
    add_phase("model_load", time.perf_counter() - loading)  # run.json "phases" (tuneforge.base.phases)
    # [task] the untrained model measured before the method changes it (language models: base validation loss)
    if resume_from is None and dist.is_main:
        facts.update(task.before_training(recipe, data, model, tokenizer, device, runtime.autocast_dtype, run_dir,
                                          log))
    epoch_zero = facts.pop("epoch_zero", None)
    if recipe.distill is not None:  # distill.student_layers: a shallower copy of the model is the student
        model = shrink_student(model, recipe.distill.student_layers)
    method: Method = build_method(recipe.method)
    model = method.prepare(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)
    hooks.model_ready(task, recipe, model, method, tokenizer, device, log)  # [hooks] continual ewc: Fisher information
    trainable, total = count_parameters(model)
    log(f"model {recipe.model}: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%) "
        f"with method '{recipe.method.name}'; device {device.type}, {runtime.precision_name}, {runtime.threads} threads")
    if dist.is_main and config.keep_checkpoints:
        check_free_disk(run_dir, trainable, total, config.keep_checkpoints)

    with phase("tokenization"):
        train_set = task.encode(tokenizer, data.train, recipe, training=True)  # [task] tokens, or images (augmented)
        validation_set = task.encode(tokenizer, data.validation, recipe, training=False)
    facts.update(task.encoded_facts(recipe, {"train": train_set, "validation": validation_set}, log))
    if on_facts is not None and facts:
        on_facts(dict(facts))
    pad_id = tokenizer.pad_token_id
    eval_batch_size = config.eval_batch_size or 2 * config.batch_size

    # --- frozen-prefix activation cache: the frozen bottom of the model runs once, not every epoch ------
    cache_context = ExitStack()
    prefix, train_cache, validation_cache = None, None, None
    depth = method.frozen_prefix_depth(describe(model).num_layers, config.epochs) if (
        config.activation_cache and task.supports_activation_cache) else 0
    if depth:
        started = time.perf_counter()
        frozen_blocks_to_eval(model)
        cache_dir = run_dir / "cache" / (f"rank-{dist.rank}" if dist.enabled else "")
        train_cache = build_cache(model, depth, train_set, eval_batch_size, pad_id, device, cache_dir, "train")
        validation_cache = build_cache(model, depth, validation_set, eval_batch_size, pad_id, device,
                                       cache_dir, "validation")
        prefix = CachedPrefix(model, depth)
        cache_context.enter_context(prefix.active(train_cache.returns_tuple))
        log(f"activation cache: embeddings + bottom {depth} layer(s) computed once for "
            f"{len(train_set) + len(validation_set)} examples "
            f"({(train_cache.nbytes + validation_cache.nbytes) / 2**20:.0f} MiB, "
            f"{time.perf_counter() - started:.1f}s); training runs only the layers above")
        add_phase("activation_cache", time.perf_counter() - started)

    # --- optimisation --------------------------------------------------------------------------------
    # DDP around the model, or FSDP2 shards in place of its weights: before the optimizer, which must own the shards
    train_model = dist.wrap(model)
    # [task] learning rates and weight decay (a task may default what the recipe leaves unset)
    optimizer = build_optimizer(model, method.optimizer_parameters(model), task.optimizer_config(recipe))
    global_batch_size = config.batch_size * dist.world_size  # each process trains on its share of a batch
    steps_per_epoch = math.ceil(hooks.batches_per_epoch(task, recipe, train_set, global_batch_size)
                                / config.grad_accum_steps)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch * config.epochs)
    loss_fn, eval_loss_fn = task.loss_functions(recipe, data, device)  # [task] cross-entropy, or BCE (multilabel)
    # distill: the teacher's logits for the train split, computed once (or read from the cache), not every epoch;
    # augmented images: the teacher runs on each augmented batch instead (its view rides in the batch)
    distiller = (Distiller.for_run(recipe, data, run_dir, device, log, train_set=train_set)
                 if recipe.distill is not None else None)
    scaler = torch.amp.GradScaler(device.type) if runtime.use_grad_scaler else None
    batch_order = random.Random(config.seed)

    selection = task.model_selection(config.early_stopping)  # [task] the metric and patience of early stopping
    # [task] what a model that learned nothing scores: every validation is compared with it (learning_guard)
    no_learning = task.no_learning_baseline(recipe, data, facts)
    best_score, best_epoch, best_metrics, best_state = None, -1, {}, None
    epochs_without_improvement, stopped_early = 0, False
    metrics_path = run_dir / "metrics.jsonl"
    optimizer_step = 0
    # train.time_budget_minutes: checked after each optimizer step; the cut epoch is still validated.
    deadline = time.perf_counter() + 60 * config.time_budget_minutes if config.time_budget_minutes else None
    out_of_time = False

    # --- fault tolerance and tracking: checkpoints, resume, non-finite losses, Ctrl-C, TensorBoard/MLflow -----
    metrics_log = MetricsLog(run_dir, config.report_to, params=config.model_dump(mode="json"), enabled=dist.is_main)
    if epoch_zero is not None:
        metrics_log.write({"step": 0, "epoch": 0, **epoch_zero})
    checkpoints = Checkpointer(run_dir, config.keep_checkpoints, enabled=dist.writes_checkpoints)
    bad_steps = BadStepGuard(config.max_bad_steps, log)
    stop = stop or StopRequest(log)
    position = LoopState()  # where the loop starts: the beginning, or a checkpoint's position
    if resume_from is not None:
        dist.check_can_resume()
        restored = restore(resume_from, dict(method.optimizer_parameters(model)), optimizer, scheduler, scaler)
        position, best_state = restored.loop, restored.best_state
        best_score, best_epoch, best_metrics = position.best_score, position.best_epoch, position.best_metrics
        epochs_without_improvement, optimizer_step = position.epochs_without_improvement, position.optimizer_step
        bad_steps.count = position.bad_steps
        if dist.is_main:
            truncate_metrics(metrics_path, position.metrics_bytes)
        log(f"resumed from {resume_from.name}: epoch {position.epoch + 1}, {position.batches_done} batch(es) done, "
            f"optimizer step {optimizer_step}")

    def save_checkpoint(next_epoch: int, batches_done: int, epoch_order_state: Any) -> Path | None:
        """Checkpoint the position "``batches_done`` batches into ``next_epoch``" (rank 0 only)."""
        state = LoopState(next_epoch, batches_done, optimizer_step, epoch_order_state, best_score, best_epoch,
                          best_metrics, epochs_without_improvement, bad_steps.count, running_loss, running_count,
                          metrics_path.stat().st_size if metrics_path.exists() else 0)
        return checkpoints.save(state, dict(method.optimizer_parameters(model)), optimizer, scheduler, scaler,
                                best_state)

    for epoch in range(position.epoch, config.epochs):
        model.train()
        message = method.on_epoch_start(model, epoch)
        if message:
            log(message)
        frozen_blocks_to_eval(model)
        dist.check_trainable_unchanged(model)
        resuming_this_epoch = epoch == position.epoch and position.epoch_batch_order_state is not None
        if resuming_this_epoch:  # draw the same batches as the interrupted run did, then skip those done
            batch_order.setstate(position.epoch_batch_order_state)
        epoch_order_state = batch_order.getstate()
        # [task] length-grouped (or shuffled) batches; multitask: each from one task, mixed by multitask.sampling
        # [hooks] continual replay: a share of every batch from the previous run's rows
        batches = hooks.training_batches(task, recipe, train_set, global_batch_size, batch_order)
        batches, loss_weights = dist.shard(batches)  # this process's share of each batch (all of it, alone)
        first_batch = position.batches_done if resuming_this_epoch else 0
        progress = tqdm(batches[first_batch:], desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                        initial=first_batch, total=len(batches),
                        dynamic_ncols=True, disable=None)  # None: a bar on a terminal, none in a log file
        epoch_start, seen, running_loss, running_count = time.perf_counter(), 0, 0.0, 0
        if first_batch:
            running_loss, running_count = position.running_loss, position.running_count
        window_finite = True  # False once a batch of this accumulation window had a NaN/inf loss
        for batch_index, (indices, batch) in enumerate(
                zip(progress, task.batches(train_set, batches[first_batch:], pad_id)), start=first_batch):
            labels = batch.pop("labels").to(device)
            teacher_inputs = batch.pop(TEACHER_PIXELS, None)  # distill on augmented images: the teacher's view
            inputs = {key: value.to(device) for key, value in batch.items()}
            if prefix:
                prefix.select(train_cache, indices)
            with torch.autocast(device.type, dtype=runtime.autocast_dtype, enabled=runtime.autocast_dtype is not None):
                logits = train_model(**inputs).logits
            loss = loss_fn(logits.float(), labels)
            extra = hooks.extra_loss(model)  # [hooks] continual ewc: the penalty of moving the old task's weights
            if extra is not None:
                loss = loss + extra
            if distiller is not None:  # (1 - alpha) * CE + alpha * T^2 * KL(teacher || student)
                loss = distiller.loss(logits.float(), loss, indices,
                                      teacher_inputs.to(device) if teacher_inputs is not None else None)
            finite = dist.all_true(bool(torch.isfinite(loss)))  # all processes skip together (DDP syncs backward)
            if finite:
                scaled = loss * (loss_weights[batch_index] if loss_weights else 1.0) / config.grad_accum_steps
                (scaler.scale(scaled) if scaler else scaled).backward()
            else:
                bad_steps.record(loss, optimizer_step, checkpoints.last_saved, run_dir)  # raises past max_bad_steps
                window_finite = False

            is_last = batch_index == len(batches) - 1
            at_step_end = (batch_index + 1) % config.grad_accum_steps == 0 or is_last
            took_step = at_step_end and window_finite
            if at_step_end and not window_finite:  # skip the step: drop the window's gradients
                optimizer.zero_grad(set_to_none=True)
                window_finite = True
            elif took_step:
                take_optimizer_step(optimizer, scheduler, method, model, config.max_grad_norm, optimizer_step + 1,
                                    steps_per_epoch * config.epochs, scaler)
                optimizer_step += 1
                fault_point("train-step")  # TUNEFORGE_FAULT: the reliability tests' kill -9 (docs/reliability.md)
                if deadline is not None and time.perf_counter() > deadline:
                    out_of_time = True

            seen += len(indices)
            if finite:
                running_loss += loss.item() * len(indices)
                running_count += len(indices)
            samples_per_s = seen / max(time.perf_counter() - epoch_start, 1e-9)
            lr = scheduler.get_last_lr()[0]
            progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.1f}")
            if optimizer_step and optimizer_step % config.log_every_steps == 0 and (
                    (batch_index + 1) % config.grad_accum_steps == 0 or is_last):
                metrics_log.write({"step": optimizer_step, "epoch": epoch + (batch_index + 1) / len(batches),
                                   "loss": running_loss / running_count if running_count else float("nan"), "lr": lr,
                                   "samples_per_s": samples_per_s})
                running_loss, running_count = 0.0, 0
            stop_now = at_step_end and dist.any_true(stop.requested)  # Ctrl-C: checkpoint, then stop
            every = config.checkpoint_every_steps
            if took_step and (stop_now or (every and optimizer_step % every == 0)):
                save_checkpoint(epoch, batch_index + 1, epoch_order_state)
            if stop_now:
                raise TrainingInterrupted(checkpoints.last_saved)
            if out_of_time:
                break
        progress.close()
        train_seconds = time.perf_counter() - epoch_start
        add_phase("training", train_seconds)

        # --- validation, early stopping ---------------------------------------------------------------
        fault_point("validation")
        with phase("validation"):
            metrics = task.validation_metrics(  # [task] softmax metrics, or sigmoid ones (multilabel)
                model, validation_set, data.label_names, eval_batch_size, pad_id, device, eval_loss_fn,
                runtime.autocast_dtype,
                before_batch=(lambda batch_indices: prefix.select(validation_cache, batch_indices)) if prefix else None)
        record = {"step": optimizer_step, "epoch": epoch + 1, "lr": scheduler.get_last_lr()[0],
                  "samples_per_s": seen / train_seconds, "train_seconds": train_seconds,
                  **{f"validation_{k}": v for k, v in metrics.items()}}
        if out_of_time:
            record["time_budget_reached"] = True
        metrics_log.write(record)
        log(f"epoch {epoch + 1}/{config.epochs}: {task.describe_metrics(metrics)} "  # [task] its headline metrics
            f"({train_seconds:.0f}s, {record['samples_per_s']:.1f} samples/s)")
        verdict = judge_learning(metrics, no_learning, task.learning_signals)
        if not verdict.learned:
            log(f"warning: epoch {epoch + 1}: {verdict.line()}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
        hooks.epoch_validated(model, method, epoch + 1, metrics)  # [hooks] tuneforge auto: the weights to average

        score = metrics[selection.metric]
        improved = best_score is None or (score > best_score if selection.higher_is_better else score < best_score)
        if improved or not selection.keep_best:
            best_score, best_epoch, best_metrics = score, epoch + 1, metrics
            best_state = snapshot_trainable(method, model)
            epochs_without_improvement = 0
        elif selection.patience is not None:
            epochs_without_improvement += 1
            if epochs_without_improvement >= selection.patience:
                log(f"early stopping: {selection.metric} has not improved for {selection.patience} epoch(s); "
                    f"keeping epoch {best_epoch}")
                stopped_early = True
                break
        if out_of_time:
            log(f"time budget of {config.time_budget_minutes:g} min reached after {optimizer_step} optimizer steps "
                f"(epoch {epoch + 1}); keeping epoch {best_epoch}")
            break
        save_checkpoint(epoch + 1, 0, batch_order.getstate())  # the next epoch starts here
        if dist.any_true(stop.requested):
            raise TrainingInterrupted(checkpoints.last_saved)

    # --- keep the best epoch and save it -------------------------------------------------------------
    metrics_log.close()
    cache_context.close()  # the model computes its full forward again from here on
    keep_best_epoch(model, best_state, config.gradient_checkpointing)
    # [hooks] tuneforge auto: the average of the last epochs' weights instead, when it validates better
    replaced = hooks.final_weights(model, method, best_metrics, lambda: task.validation_metrics(
        model, validation_set, data.label_names, eval_batch_size, pad_id, device, eval_loss_fn, runtime.autocast_dtype))
    if replaced is not None:
        best_metrics = replaced
    facts["learning"] = judge_learning(best_metrics, no_learning, task.learning_signals).as_facts(task.learning_fixes)
    model = dist.unsharded(model)  # FSDP: the processes send their shards, rank 0 gets the whole model
    dist.wait()
    if not dist.is_main:  # rank 0 saves; the other processes' weights are the same
        return TrainResult(model=model, tokenizer=tokenizer, runtime=runtime, best_epoch=best_epoch,
                           best_metrics=best_metrics, trainable_params=trainable, total_params=total,
                           stopped_early=stopped_early, facts=facts)
    # [task] save through the method and pass the integrity gate (the run read back must answer as trained)
    saved = task.save(recipe, method, model, tokenizer, run_dir, validation_set, pad_id, device)
    if remove_checkpoints:  # else the caller removes them once everything after training is done too
        checkpoints.remove_all(log)
    return TrainResult(model=saved, tokenizer=tokenizer, runtime=runtime, best_epoch=best_epoch,
                       best_metrics=best_metrics, trainable_params=trainable, total_params=total,
                       stopped_early=stopped_early, facts=facts)
