"""The doctor's preflight of a classification-style recipe: a few optimizer steps of the recipe's model and method
on a tiny batch of its own training rows — the loss is finite and falls, every trainable tensor gets a non-zero
gradient and no frozen one gets any — and the pieces the generative preflight (:mod:`tuneforge.apps.doctor.generative`)
shares with it."""

from __future__ import annotations

import math
import time

import torch

from tuneforge.apps.doctor.report import Report
from tuneforge.core.data.batching import encode_split, iterate_batches
from tuneforge.core.methods import build_method
from tuneforge.core.tasks.classification import load_classifier
from tuneforge.core.engine.optim import build_optimizer
from tuneforge.base.errors import UserError
from tuneforge.core.engine.runtime import setup_runtime

# bf16 slower than fp32 by more than this factor is worth a warning even when the CPU claims native bf16.
BF16_SLOWDOWN_WARNING = 1.5
PREFLIGHT_STEPS = 10
PREFLIGHT_ROWS = 8
PREFLIGHT_MAX_TOKENS = 64


def preflight(report: Report, recipe, data, log, steps: int = PREFLIGHT_STEPS, rows: int = PREFLIGHT_ROWS) -> None:
    """A few optimizer steps of the recipe's model and method on a tiny batch of its training rows."""
    from torch import nn


    started = time.perf_counter()
    if recipe.task != "classification":
        report.add("skip", "preflight", f"not supported yet for task '{recipe.task}' (classification only)", log=log)
        return
    runtime = preflight_runtime(report, recipe, log)
    if runtime is None:
        return
    device = runtime.device
    tokenizer, model = load_classifier(recipe, data.label_names)
    method = build_method(recipe.method)
    model = prepare_for_preflight(recipe, method, model, device, report, log)
    if model is None:
        return
    message = method.on_epoch_start(model, 0)
    if message:
        log(f"        ({message})")

    picked = pick_rows(data.train.labels, rows)
    encoded = encode_split(tokenizer, data.train.subset(picked, "preflight"),
                           min(recipe.data.max_length, PREFLIGHT_MAX_TOKENS))
    indices = list(range(len(picked)))
    batch = next(iterate_batches(encoded, [indices], tokenizer.pad_token_id))
    labels = batch.pop("labels").to(device)
    inputs = {key: value.to(device) for key, value in batch.items()}
    autocast = dict(device_type=device.type, dtype=runtime.autocast_dtype, enabled=runtime.autocast_dtype is not None)
    loss_fn = nn.CrossEntropyLoss()

    def evaluation_loss() -> float:
        model.eval()
        with torch.no_grad(), torch.autocast(**autocast):
            return float(loss_fn(model(**inputs).logits.float(), labels))

    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    watch = GradientWatch(model)
    optimizer = build_optimizer(model, method.optimizer_parameters(model), recipe.train)
    first = evaluation_loss()
    losses, step_seconds = [], []
    for step in range(steps):
        model.train()
        step_started = time.perf_counter()
        with torch.autocast(**autocast):
            loss = loss_fn(model(**inputs).logits.float(), labels)
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            report.add("fail", "preflight loss", f"{losses[-1]} at step {step + 1} of {steps}",
                       "lower train.learning_rate, use train.precision=fp32, or check the data for empty texts", log=log)
            return
        loss.backward()
        step_seconds.append(time.perf_counter() - step_started)  # forward + backward, as timed in fp32 below
        watch.record()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    check_gradients(report, model, trainable, log, watch=watch)
    last = evaluation_loss()
    if runtime.autocast_dtype is not None and device.type == "cpu":
        compare_step_with_fp32(report, model, inputs, labels, loss_fn, min(step_seconds), runtime.precision_name, log)
    judge_preflight_loss(report, recipe, method, runtime.precision_name, first, last, losses, len(indices),
                         time.perf_counter() - started, "check that the labels match the texts", log)


def judge_preflight_loss(report: Report, recipe, method, precision: str, first: float, last: float,
                         losses: list[float], rows: int, seconds: float, data_hint: str, log, **measured) -> None:
    """Record the preflight's measurements (``measured``: extra ones, after ``rows``) and judge its loss: finite
    after the steps, and lower than before them; ``data_hint`` ends the fix when it did not fall."""
    steps = len(losses)
    report.measurements["preflight"] = {"rows": rows, **measured, "steps": steps, "loss_before": first,
                                        "loss_after": last, "train_losses": losses, "seconds": round(seconds, 1),
                                        "precision": precision}
    if not math.isfinite(last):
        report.add("fail", "preflight loss", f"{last} after {steps} steps",
                   "lower train.learning_rate or use train.precision=fp32", log=log)
    elif last < first:
        report.add("ok", "preflight loss", f"finite and falling on {rows} rows: {first:.4f} -> {last:.4f} after "
                   f"{steps} optimizer steps ({precision}, {seconds:.1f}s)", log=log)
    else:
        report.add("fail", "preflight loss", f"did not fall on {rows} training rows in {steps} steps at "
                   f"learning rate {recipe.train.learning_rate:g}: {first:.4f} -> {last:.4f}",
                   f"raise train.learning_rate (the method's usual one: {method.default_learning_rate:g}) or "
                   f"{data_hint}", log=log)


def preflight_runtime(report: Report, recipe, log):
    """The recipe's runtime (device, precision, threads) for a preflight; None when it cannot be set up (the
    failure is in ``report``)."""

    try:
        return setup_runtime(recipe.train)
    except UserError as error:
        report.add("fail", "preflight", f"cannot set up the runtime: {error}", "see train.precision above", log=log)
        return None


def compare_step_with_fp32(report: Report, model, inputs, labels, loss_fn, reduced_seconds: float, precision: str,
                           log) -> None:
    """Time forward + backward of the same batch in fp32 (fastest of two) against the preflight's fastest
    reduced-precision forward + backward: the slowdown of *this* model, beside the matmul measurement."""
    model.train()
    fp32_seconds = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        loss_fn(model(**inputs).logits.float(), labels).backward()
        fp32_seconds = min(fp32_seconds, time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    ratio = reduced_seconds / fp32_seconds
    report.measurements["step_seconds"] = {precision: round(reduced_seconds, 3), "fp32": round(fp32_seconds, 3)}
    status = "warn" if ratio > BF16_SLOWDOWN_WARNING else "ok"
    report.add(status, "train.precision", f"forward + backward of this model on the preflight batch: {precision} "
               f"{reduced_seconds:.2f}s vs fp32 {fp32_seconds:.2f}s ({ratio:.1f}x {'slower' if ratio >= 1 else 'the time'})",
               "--set train.precision=fp32" if status == "warn" else None, log=log)


class GradientWatch:
    """Which tensors got a non-zero gradient in any of the preflight's backward passes.

    One backward is not enough: a zero-initialised adapter half (LoRA's B) sends no gradient to the other half
    (LoRA's A) until the first optimizer step has moved it.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.moved: set[str] = set()
        self.leaked: set[str] = set()
        self.backwards = 0

    def record(self) -> None:
        """Call after each backward, before the optimizer clears the gradients."""
        self.backwards += 1
        for name, p in self.model.named_parameters():
            if p.grad is not None and bool(p.grad.abs().sum() > 0):
                (self.moved if p.requires_grad else self.leaked).add(name)


def check_gradients(report: Report, model, trainable: dict, log, watch: GradientWatch | None = None) -> None:
    """Every trainable tensor got a non-zero gradient and no frozen one got any: in the gradients held now
    (after one backward), or over every backward ``watch`` recorded."""
    if watch is None:
        dead = [name for name, p in trainable.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
        leaked = [name for name, p in model.named_parameters() if not p.requires_grad and p.grad is not None
                  and bool(p.grad.abs().sum() > 0)]
    else:
        dead = [name for name in trainable if name not in watch.moved]
        leaked = [name for name, _ in model.named_parameters() if name in watch.leaked]
    passes = f" in {watch.backwards} backward pass(es)" if watch is not None else ""
    frozen = sum(1 for _, p in model.named_parameters() if not p.requires_grad)
    count = sum(p.numel() for p in trainable.values())
    if not trainable:
        report.add("fail", "gradients", "no parameter is trainable", "check method.name and its keys", log=log)
    elif dead:
        report.add("fail", "gradients", f"{len(dead)} of {len(trainable)} trainable tensors got no or all-zero "
                   f"gradient{passes}: {', '.join(dead[:5])}{' ...' if len(dead) > 5 else ''}",
                   "these weights would never train: check that the method's modules are in the forward pass "
                   "(e.g. gradient checkpointing with a method that hooks the layers)", log=log)
    else:
        report.add("ok", "gradients", f"all {len(trainable)} trainable tensors ({count:,} parameters) got non-zero "
                   f"gradients{passes}", log=log)
    if leaked:
        report.add("fail", "gradients", f"{len(leaked)} frozen tensors got gradients{passes}: {', '.join(leaked[:5])}",
                   "a frozen weight must not accumulate gradients; report this as a bug", log=log)
    elif frozen:
        report.add("ok", "frozen", f"none of the {frozen} frozen tensors got a gradient", log=log)


def pick_rows(labels, count: int) -> list[int]:
    """Up to ``count`` row indices, taken round-robin over the labels so that the tiny batch has several."""
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(index)
    picked: list[int] = []
    queues = [rows for _, rows in sorted(by_label.items())]
    while len(picked) < count and any(queues):
        for rows in queues:
            if rows and len(picked) < count:
                picked.append(rows.pop(0))
    return sorted(picked)


# ----------------------------------------------------------------------------- the command


def prepare_for_preflight(recipe, method, model, device, report, log):
    """Prepare ``model`` with ``method`` as training does (gradient checkpointing, device) and report whether the
    method applies; ``None`` when it does not (the failure is in ``report``)."""
    try:
        model = method.prepare(model)
    except UserError as error:
        report.add("fail", "method", f"'{recipe.method.name}' cannot be applied to {recipe.model} "
                   f"({type(model).__name__}): {error}", "choose another method.name (see `tuneforge models`)",
                   log=log)
        return None
    report.add("ok", "method", f"'{recipe.method.name}' applies to {type(model).__name__}", log=log)
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device)
