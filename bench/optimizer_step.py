"""One AdamW step over a real model's trainable parameters, with each of torch's three kernels; prints one
JSON line per kernel (milliseconds per step, extra resident memory during the step).

    python bench/optimizer_step.py --model minilm --threads 2

Why it matters: in full fine-tuning the optimizer step runs once per batch over every weight, so a slow
kernel costs as much as a large part of the forward/backward pass on a small CPU. tuneforge picks the kernel
in ``tuneforge.core.engine.optim.adamw_kernel`` (``kernel_in_use`` in the output).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tuneforge.apps.plan import peak_resident_bytes as peak_resident, reset_peak_resident, resident_bytes

KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


def measure(parameters: list[torch.nn.Parameter], options: dict[str, bool], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` step time and the resident memory the step adds on top of the states."""
    optimizer = torch.optim.AdamW([{"params": parameters, "weight_decay": 0.01}], lr=1e-4, **options)
    optimizer.step()  # creates the two AdamW states
    before = resident_bytes()
    reset_peak_resident()  # VmHWM, the peak resident size, back to the current size
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    extra = (peak_resident() - before) // 2**20
    optimizer.state.clear()
    return {"ms_per_step": round(1000 * min(seconds), 1),
            "median_ms": round(1000 * sorted(seconds)[len(seconds) // 2], 1), "extra_rss_mib": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="alias, folder or hub id (its weights are loaded)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from tuneforge.base.models import resolve_model
    from tuneforge.base.quiet import quiet_transformers
    from tuneforge.core.engine.optim import adamw_kernel
    from tuneforge.core.engine.runtime import physical_cores

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model(args.model), num_labels=2)
    parameters = [p for p in model.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    count = sum(p.numel() for p in parameters)
    in_use = next(iter(adamw_kernel(parameters)))  # "fused" or "foreach"
    for kernel, options in KERNELS.items():
        result = measure(parameters, options, args.repeats)
        print(json.dumps({"kernel": kernel, "model": args.model, "trainable_params": count,
                          "weights_mib": round(4 * count / 2**20), "threads": threads, **result,
                          "kernel_in_use": kernel == in_use}), flush=True)


if __name__ == "__main__":
    main()
