"""The doctor's preflight for ``task: sft`` and ``causal-lm``: a few optimizer steps of the recipe's language
model and method on a tiny batch of its own training rows, encoded and batched exactly as
:class:`tuneforge.core.tasks.generative.LanguageModelTask` does for the training loop, plus one decoded training example with its loss mask marked, so a
prompt that is trained on (or an answer that is masked away) is seen before the run, not after it.

``masked-lm`` is not covered: its random token masking makes a before/after loss on one batch meaningless.
"""

from __future__ import annotations

import math
import time

import torch

from tuneforge.apps.doctor.preflight import (GradientWatch, check_gradients, judge_preflight_loss,
                                             prepare_for_preflight, preflight_runtime)
from tuneforge.base.errors import UserError
from tuneforge.core.data.generative import IGNORE_INDEX, EncodedExamples
from tuneforge.core.engine.optim import build_optimizer
from tuneforge.core.methods import build_method
from tuneforge.core.tasks import task_for

PREFLIGHT_TASKS = ("sft", "causal-lm")
# The decoded example is cut after this many tokens so that a 2048-token row does not flood the terminal.
EXAMPLE_MAX_TOKENS = 160
MASKED_OPEN, MASKED_CLOSE = "[", "]"
TRAINED_OPEN, TRAINED_CLOSE = "{{", "}}"


def loss_mask_spans(input_ids: list[int], labels: list[int]) -> list[tuple[bool, list[int]]]:
    """The example as runs of tokens with the same loss mask: ``(trained, token_ids)`` in order.

    A token is trained when its label is not -100. Position 0 is never predicted (the model shifts the labels),
    so it counts as masked whatever its label says.
    """
    spans: list[tuple[bool, list[int]]] = []
    for position, (token, label) in enumerate(zip(input_ids, labels)):
        trained = position > 0 and label != IGNORE_INDEX
        if spans and spans[-1][0] == trained:
            spans[-1][1].append(token)
        else:
            spans.append((trained, [token]))
    return spans


def render_loss_mask(tokenizer, input_ids: list[int], labels: list[int],
                     max_tokens: int = EXAMPLE_MAX_TOKENS) -> str:
    """One training example decoded as plain text: masked (no-loss) tokens inside ``[...]``, trained ones
    inside ``{{...}}``; newlines shown as ``\\n`` so the example stays on one line per span."""
    shown_ids, shown_labels = input_ids[:max_tokens], labels[:max_tokens]
    parts = []
    for trained, tokens in loss_mask_spans(shown_ids, shown_labels):
        text = tokenizer.decode(tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text = text.replace("\n", "\\n")
        parts.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else f"{MASKED_OPEN}{text}{MASKED_CLOSE}")
    rendered = "".join(parts)
    if len(input_ids) > max_tokens:
        rendered += f" ... ({len(input_ids) - max_tokens} more tokens)"
    return rendered


def check_example(report, tokenizer, recipe, encoded: EncodedExamples, log) -> None:
    """Print the first encoded training row with its loss mask; fail when it trains on nothing, warn when an
    sft row trains on every token (the prompt would be learned as well as the answer)."""
    ids, labels = encoded.input_ids[0], encoded.labels[0]
    trained = sum(1 for position, label in enumerate(labels) if position > 0 and label != IGNORE_INDEX)
    packed = " (a packed row: several examples, each restarting its positions)" if encoded.position_ids else ""
    report.measurements["example"] = {"tokens": len(ids), "trained_tokens": trained,
                                      "text": render_loss_mask(tokenizer, ids, labels)}
    log(f"        training example 1{packed}: {len(ids)} tokens, {trained} trained {TRAINED_OPEN}...{TRAINED_CLOSE}, "
        f"{len(ids) - trained} masked {MASKED_OPEN}...{MASKED_CLOSE}")
    log("        " + report.measurements["example"]["text"])
    if trained == 0:
        report.add("fail", "loss mask", "the first training example has no trained token",
                   "raise data.max_length so that the answer survives truncation", log=log)
    elif recipe.task == "sft" and trained == len(ids) - 1:
        report.add("warn", "loss mask", "every token of the sft example is trained, the prompt included",
                   "check generative.chat_template and the data columns (is the prompt empty?)", log=log)
    else:
        what = "the answer only; the prompt is masked" if recipe.task == "sft" else "every token after the first"
        report.add("ok", "loss mask", f"{trained} of {len(ids)} tokens trained ({what})", log=log)


def generative_preflight(report, recipe, data, log, steps: int, rows: int) -> None:
    """A few optimizer steps of the recipe's language model and method on its first ``rows`` training rows:
    finite, falling loss; non-zero gradients for every trainable tensor and none for frozen ones."""

    started = time.perf_counter()
    if recipe.task not in PREFLIGHT_TASKS:
        report.add("skip", "preflight", f"not supported yet for task '{recipe.task}' "
                   f"({', '.join(PREFLIGHT_TASKS)} and classification only)", log=log)
        return
    runtime = preflight_runtime(report, recipe, log)
    if runtime is None:
        return
    device = runtime.device
    task = task_for(recipe.task)
    tokenizer, model = task.load_model(recipe, [])  # as in training: no key/value cache
    method = build_method(recipe.method)
    model = prepare_for_preflight(recipe, method, model, device, report, log)
    if model is None:
        return

    split = data.train.subset(list(range(min(rows, len(data.train)))), "preflight")
    try:
        encoded = task.encode(tokenizer, split, recipe, training=True)
    except UserError as error:
        report.add("fail", "data", f"cannot encode the training rows: {error}", "fix the key the message names",
                   log=log)
        return
    if len(encoded) == 0:
        report.add("fail", "data", f"none of the first {len(split)} training rows keeps a trained token after "
                   f"truncation to data.max_length={recipe.data.max_length}", "raise data.max_length", log=log)
        return
    check_example(report, tokenizer, recipe, encoded, log)
    indices = list(range(len(encoded)))
    batch = {key: value.to(device) for key, value in next(task.batches(encoded, [indices], tokenizer.pad_token_id)).items()}
    autocast = dict(device_type=device.type, dtype=runtime.autocast_dtype, enabled=runtime.autocast_dtype is not None)

    def evaluation_loss() -> float:
        model.eval()
        with torch.no_grad(), torch.autocast(**autocast):
            return float(model(**batch).loss)

    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    watch = GradientWatch(model)
    optimizer = build_optimizer(model, method.optimizer_parameters(model), recipe.train)
    first = evaluation_loss()
    losses = []
    for step in range(steps):
        model.train()
        with torch.autocast(**autocast):
            loss = model(**batch).loss  # the model's own shifted token cross-entropy, as in training
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            report.add("fail", "preflight loss", f"{losses[-1]} at step {step + 1} of {steps}",
                       "lower train.learning_rate, use train.precision=fp32, or check the data for empty answers",
                       log=log)
            return
        loss.backward()
        watch.record()
        optimizer.step()
        method.on_optimizer_step(model, step + 1, steps)
        optimizer.zero_grad(set_to_none=True)
    check_gradients(report, model, trainable, log, watch=watch)
    last = evaluation_loss()
    judge_preflight_loss(report, recipe, method, runtime.precision_name, first, last, losses, len(split),
                         time.perf_counter() - started, "check the data", log, encoded_rows=len(encoded))
