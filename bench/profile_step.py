"""Where the time of one training step and one inference batch goes, with ``torch.profiler``: JSON lines of
shares by group, and the top operators.

    python bench/profile_step.py                                   # MiniLM, sst2 train rows, batch 32
    python bench/profile_step.py --model minilm --data ../shared/data/sst2 --steps 3 --top 15

The step is tuneforge's own: a length-grouped batch padded to its longest row (tuneforge's ``collate``),
forward, cross-entropy, backward, gradient clipping and the fused AdamW step of ``build_optimizer``; the
inference batch is a length-sorted batch of ``--eval-batch-size`` rows under ``torch.inference_mode``.
After ``--warmup`` untimed steps, ``--steps`` steps are timed by wall clock per part (data = collate,
forward, backward, optimizer = clip + step + zero_grad) and profiled; operator self-times over the whole step
are grouped:

- ``matmul``: ``addmm``, ``mm``, ``bmm``, ``matmul``, ``linear`` (and their backward kernels);
- ``attention``: scaled-dot-product attention kernels (SDPA) and their backward;
- ``softmax_layernorm``: softmax, log-softmax, layer norm (and backward);
- ``elementwise``: GELU, dropout, add, mul, copies and other pointwise kernels;
- ``optimizer``: the fused AdamW kernel and gradient clipping (norms);
- ``other``: the rest (embedding lookups, loss, reductions, the collate's tensor creation, ...);
- ``python_and_dispatch``: the wall time of the step not inside any operator (Python, autograd bookkeeping,
  dispatch), plus autograd's own wrapper events.

``step_parts_share`` splits the step's wall time by part (data = collate, forward, backward, optimizer).

Shares are more stable than absolute times on a loaded machine; say how loaded it was (the lines record the
load average).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
GROUPS = {
    "python_and_dispatch": ("autograd::engine", "profilerstep"),  # autograd's wrappers around the kernels below
    "optimizer": ("adamw", "_foreach", "clip_grad", "vector_norm"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention", "sdpa"),
    "matmul": ("addmm", "aten::mm", "bmm", "matmul", "linear"),
    "softmax_layernorm": ("softmax", "layer_norm", "native_layer_norm"),
    "elementwise": ("gelu", "dropout", "aten::add", "aten::mul", "aten::div", "aten::sub", "copy_", "aten::tanh",
                    "aten::masked_fill", "aten::where", "aten::clone", "aten::fill_", "aten::zero_", "aten::to",
                    "aten::_to_copy", "aten::bernoulli", "aten::pow", "aten::sqrt", "aten::rsub"),
}


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, needles in GROUPS.items():
        if any(needle in lowered for needle in needles):
            return group
    return "other"


def event_group(event) -> str:
    """The group of a profiled operator: attention when it runs inside an SDPA call (SDPA's math fallback is
    made of bmm/softmax/dropout kernels), optimizer inside the optimizer's step, else by its own name."""
    parent = event
    while parent is not None:
        name = parent.name.lower()
        if "scaled_dot_product" in name:
            return "attention"
        if name.startswith("optimizer.") or "adamw" in name:
            return "optimizer"
        parent = parent.cpu_parent
    return group_of(event.name)


def operator_shares(prof, wall_seconds: float, top: int) -> tuple[dict[str, float], list[dict]]:
    """Shares of ``wall_seconds`` by group (operators' self time, so nothing counts twice), and the ``top``
    operators by self time."""
    seconds: dict[str, float] = defaultdict(float)
    by_op: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        self_s = event.self_cpu_time_total / 1e6
        if self_s <= 0:
            continue
        group = event_group(event)
        seconds[group] += self_s
        entry = by_op[(event.name, group)]
        entry[0] += self_s
        entry[1] += 1
    inside = sum(seconds.values())
    seconds["python_and_dispatch"] += max(0.0, wall_seconds - inside)
    total = sum(seconds.values())
    shares = {group: round(value / total, 3) for group, value in sorted(seconds.items(), key=lambda kv: -kv[1])}
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]
    top_ops = [{"op": name, "group": group, "self_ms": round(1000 * s, 2), "calls": int(count)}
               for (name, group), (s, count) in ranked]
    return shares, top_ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "sst2"),
                        help="folder with train.jsonl (a 'text' field); synthetic sentences when absent")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.base.models import resolve_model
    from tuneforge.base.recipe import TrainConfig
    from tuneforge.core.data.batching import EncodedSplit, collate, length_grouped_batches, sorted_batches
    from tuneforge.core.engine.optim import build_optimizer

    source = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    train_file = Path(args.data) / "train.jsonl"
    if train_file.is_file():
        texts = [json.loads(line)["text"] for line in train_file.open(encoding="utf-8") if line.strip()][:4000]
    else:
        words = "the film was a good bad long short story of actors and plot".split()
        rng = random.Random(0)
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(2000)]
    encoded = tokenizer(texts, truncation=True, max_length=args.max_length, return_attention_mask=False)
    split = EncodedSplit(encoded["input_ids"], encoded.get("token_type_ids"), [i % 2 for i in range(len(texts))])
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    optimizer = build_optimizer(model, model.named_parameters(), TrainConfig(learning_rate=1e-4, weight_decay=0.01))
    batches = length_grouped_batches(split.lengths, args.batch_size, random.Random(0))
    pad = tokenizer.pad_token_id
    load = round(os.getloadavg()[0], 2)

    parts: dict[str, float] = defaultdict(float)

    def step(indices: list[int]) -> None:
        started = time.perf_counter()
        batch = collate(split, indices, pad)
        labels = batch.pop("labels")
        parts["data"] += time.perf_counter() - started
        started = time.perf_counter()
        loss = nn.functional.cross_entropy(model(**batch).logits, labels)
        parts["forward"] += time.perf_counter() - started
        started = time.perf_counter()
        loss.backward()
        parts["backward"] += time.perf_counter() - started
        started = time.perf_counter()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        parts["optimizer"] += time.perf_counter() - started

    model.train()
    for indices in batches[:args.warmup]:
        step(indices)
    parts.clear()
    timed = batches[args.warmup:args.warmup + args.steps]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for indices in timed:
            step(indices)
    # the profiler's own overhead inflates these a little; the shares are what to read
    step_total = sum(parts.values())
    shares, top_ops = operator_shares(prof, step_total, args.top)
    tokens = sum(len(split.input_ids[i]) for b in timed for i in b)
    padded = sum(len(b) * max(len(split.input_ids[i]) for i in b) for b in timed)
    print(json.dumps({"profile": "training_step", "model": args.model, "batch_size": args.batch_size,
                      "steps": len(timed), "threads": torch.get_num_threads(), "load_average": load,
                      "real_tokens": tokens, "padded_tokens": padded,
                      "step_parts_share": {k: round(v / step_total, 3) for k, v in parts.items()},
                      "step_share_by_group": shares}), flush=True)
    print(json.dumps({"profile": "training_step_top_ops", "ops": top_ops}), flush=True)

    model.eval()
    eval_batches = sorted_batches(split.lengths, args.eval_batch_size)
    middle = eval_batches[len(eval_batches) // 2]  # a batch of typical length, not the longest
    batch = collate(split, middle, pad)
    batch.pop("labels")
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(**batch)
        started = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                model(**batch)
        wall = time.perf_counter() - started
    shares, top_ops = operator_shares(prof, wall, args.top)
    print(json.dumps({"profile": "inference_batch", "model": args.model, "batch_size": len(middle),
                      "tokens_per_row": batch["input_ids"].shape[1], "repeats": args.steps,
                      "threads": torch.get_num_threads(), "load_average": round(os.getloadavg()[0], 2),
                      "share_by_group": shares}), flush=True)
    print(json.dumps({"profile": "inference_batch_top_ops", "ops": top_ops}), flush=True)


if __name__ == "__main__":
    main()
