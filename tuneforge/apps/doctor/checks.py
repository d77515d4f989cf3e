"""``tuneforge doctor [RECIPE.yaml]``: is this machine (and this recipe) fit to train, before hours are spent?

Without a recipe: library versions, CPU features (AVX2, AVX-512, native bf16, AMX), fp32 vs bf16 matmul
speed measured here, the GPU and its compute capability, free disk where runs are written. With a recipe:
the recipe's full validation, known-bad combinations for this machine (bf16 on a CPU without native bf16,
fp16 without a GPU), and a preflight — a few optimizer steps on a tiny batch of the recipe's own data, with
its model and method — checking that the loss is finite and falls, that every trainable parameter gets a
non-zero gradient and that no frozen one gets any. Generative recipes (sft, causal-lm) get the same
preflight from :mod:`tuneforge.apps.doctor.generative`, with one training example printed with its loss mask.
Each failure says the fix; any failure exits 1. Given a run folder instead of a recipe, it checks that run's
integrity record and files (:mod:`tuneforge.apps.doctor.run_folder`).

This module only checks; it never writes a run folder.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tuneforge import __version__
from tuneforge.base.machine import cpu_model, git_commit, library_versions

CPU_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX-BF16",
             "amx_tile": "AMX tiles"}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# bf16 slower than fp32 by more than this factor is worth a warning even when the CPU claims native bf16.
BF16_SLOWDOWN_WARNING = 1.5
MIN_FREE_DISK_GB = 2.0
PREFLIGHT_STEPS = 10
PREFLIGHT_ROWS = 8
PREFLIGHT_MAX_TOKENS = 64


@dataclass
class Check:
    """One line of the doctor's output."""

    status: str  # ok, info, warn, fail, skip
    name: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"  {self.status:<5} {self.name}: {self.detail}"
        return text + (f"\n        fix: {self.fix}" if self.fix else "")


@dataclass
class Report:
    """Every check, in the order they ran."""

    checks: list[Check] = field(default_factory=list)
    measurements: dict = field(default_factory=dict)

    def add(self, status: str, name: str, detail: str, fix: str | None = None, log=None) -> Check:
        check = Check(status, name, detail, fix)
        self.checks.append(check)
        if log is not None:
            log(check.line())
        return check

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]


# ----------------------------------------------------------------------------- the machine


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def has_native_bf16(flags: set[str]) -> bool:
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def matmul_speed(dtype: torch.dtype, size: int = 256, seconds: float = 0.25, device: str = "cpu",
                 min_trials: int = 3) -> float:
    """GFLOP/s of one ``size`` x ``size`` matmul in ``dtype``: the fastest of repeated trials over about
    ``seconds`` (the fastest, not the mean, so that other processes on the machine skew it least), on one
    CPU thread so that the fp32/bf16 ratio compares the kernels, not the thread pools."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        torch.matmul(a, b)  # warm-up: kernel selection, allocation
        best, trials, started = float("inf"), 0, time.perf_counter()
        while trials < min_trials or time.perf_counter() - started < seconds:
            begin = time.perf_counter()
            torch.matmul(a, b)
            if device != "cpu":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - begin)
            trials += 1
    finally:
        torch.set_num_threads(threads)
    return 2 * size ** 3 / best / 1e9


def free_disk_gb(folder: Path) -> tuple[Path, float]:
    """Free space (GB) on the file system that holds ``folder`` (or its nearest existing parent)."""
    probe = folder.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free / 1e9


def check_machine(report: Report, output_dir: Path, log) -> None:
    versions = library_versions()
    report.measurements["versions"] = versions
    commit = git_commit()
    report.add("info", "tuneforge", f"{__version__}" + (f" (git {commit})" if commit else ""), log=log)
    report.add("info", "libraries", ", ".join(f"{k} {v}" for k, v in versions.items() if k != "tuneforge"), log=log)
    flags = cpu_flags()
    present = [label for flag, label in CPU_FLAGS.items() if flag in flags]
    absent = [label for flag, label in CPU_FLAGS.items() if flag not in flags]
    report.measurements["cpu"] = {"model": cpu_model(), "logical_cores": os.cpu_count(),
                                  "flags": sorted(flag for flag in CPU_FLAGS if flag in flags),
                                  "native_bf16": has_native_bf16(flags)}
    report.add("info", "cpu", f"{cpu_model()}, {os.cpu_count()} logical cores; has {', '.join(present) or 'none'}; "
               f"lacks {', '.join(absent) or 'nothing'} (from /proc/cpuinfo)", log=log)
    if "avx2" not in flags and platform.machine() in ("x86_64", "AMD64"):
        report.add("warn", "cpu", "no AVX2: PyTorch's CPU kernels run far slower than on any recent x86 CPU",
                   "train on a machine with AVX2 or a GPU", log=log)
    fp32 = matmul_speed(torch.float32)
    bf16 = matmul_speed(torch.bfloat16)
    slowdown = fp32 / bf16
    report.measurements["matmul_gflops"] = {"fp32": round(fp32, 1), "bf16": round(bf16, 1),
                                            "bf16_slowdown": round(slowdown, 2)}
    report.add("info", "cpu matmul", f"256x256, 1 thread: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s "
               f"(bf16 {'%.1fx slower' % slowdown if slowdown >= 1 else '%.1fx faster' % (1 / slowdown)}; measured now)",
               log=log)
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            report.add("ok", f"gpu {index}", f"{props.name}, compute capability {props.major}.{props.minor}, "
                       f"{props.total_memory / 2**30:.0f} GiB, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}",
                       log=log)
        report.measurements["gpu"] = torch.cuda.get_device_name(0)
    else:
        report.add("info", "gpu", f"none visible to torch {torch.__version__} (training runs on the CPU)", log=log)
        report.measurements["gpu"] = None
    where, free = free_disk_gb(output_dir)
    report.measurements["free_disk_gb"] = round(free, 1)
    if free < MIN_FREE_DISK_GB:
        report.add("fail", "disk", f"{free:.1f} GB free for {output_dir} (file system of {where}); runs need room "
                   "for checkpoints and the model", "free some space or pass --output to a roomier disk", log=log)
    else:
        report.add("ok", "disk", f"{free:.1f} GB free for {output_dir} (file system of {where})", log=log)


# ----------------------------------------------------------------------------- the recipe


def check_recipe_combinations(report: Report, recipe, log) -> None:
    """Known-bad combinations of recipe keys and this machine (no model loaded)."""
    precision = recipe.train.precision
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        report.add("fail", "train.precision", "fp16 needs a CUDA GPU and there is none here",
                   "--set train.precision=fp32 (or auto)", log=log)
    if precision == "bf16" and not cuda:
        slowdown = report.measurements["matmul_gflops"]["bf16_slowdown"]
        native = report.measurements["cpu"]["native_bf16"]
        if not native or slowdown > BF16_SLOWDOWN_WARNING:
            report.add("warn", "train.precision",
                       f"bf16 on a CPU {'without' if not native else 'with'} native bf16 "
                       f"(no {' / '.join(CPU_FLAGS[f] for f in NATIVE_BF16_FLAGS)}): bf16 matmuls measured "
                       f"{slowdown:.1f}x slower than fp32 here, so training would be slower, not faster",
                       "--set train.precision=fp32 (or auto, which picks fp32 on a CPU)", log=log)
        else:
            report.add("ok", "train.precision", f"bf16 on a CPU with native bf16 (measured {1 / slowdown:.1f}x "
                       "the speed of fp32)", log=log)
    elif precision in ("auto", "fp32") or (precision == "bf16" and cuda):
        report.add("ok", "train.precision", f"{precision}" + (" (fp32 on this CPU)" if precision == "auto" and not cuda
                                                              else ""), log=log)
    threads = recipe.train.num_threads
    if threads and threads > (os.cpu_count() or 1):
        report.add("warn", "train.num_threads", f"{threads} threads on {os.cpu_count()} logical cores oversubscribes "
                   "the CPU", f"--set train.num_threads={os.cpu_count()}", log=log)


def preflight(report: Report, recipe, data, log, steps: int = PREFLIGHT_STEPS, rows: int = PREFLIGHT_ROWS) -> None:
    """A few optimizer steps of the recipe's model and method on a tiny batch of its training rows."""
    from torch import nn

    from tuneforge.core.data.batching import encode_split, iterate_batches
    from tuneforge.core.methods import build_method
    from tuneforge.core.tasks.classification import load_classifier
    from tuneforge.core.engine.optim import build_optimizer

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
    from tuneforge.base.errors import UserError
    from tuneforge.core.engine.runtime import setup_runtime

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


def run_doctor(recipe_path: str | None, overrides: list[str], output_dir: str | None, steps: int = PREFLIGHT_STEPS,
               log: Callable[[str], None] = print) -> Report:
    """All checks; with a recipe, its validation, known-bad combinations and the preflight. With a run folder
    instead of a recipe: the run's integrity record and files (:mod:`tuneforge.apps.doctor.run_folder`), not the machine."""
    from tuneforge.apps.doctor.run_folder import check_run_folder, is_run_folder
    from tuneforge.base.errors import UserError

    report = Report()
    if recipe_path is not None and is_run_folder(recipe_path):
        log(f"run {recipe_path}")
        check_run_folder(report, Path(recipe_path), log)
        return report
    log("machine")
    check_machine(report, Path(output_dir or "runs"), log)
    if recipe_path is None:
        return report
    log(f"recipe {recipe_path}")
    generative = is_generative(recipe_path, overrides)
    if generative:  # sft / causal-lm / masked-lm: validated and preflighted by tuneforge.apps.doctor.generative
        from tuneforge.apps.doctor.generative import generative_preflight
        from tuneforge.core.engine.generative import validate_generative_job as validate
    else:
        from tuneforge.core.engine.validate import validate_job as validate
    try:
        job = validate(recipe_path, overrides)
    except UserError as error:
        check_recipe_combinations_raw(report, recipe_path, overrides, log)
        report.add("fail", "recipe", str(error).replace("\n", "\n        "), "fix the recipe as the message says",
                   log=log)
        return report
    recipe = job.recipe
    kind = f"task {recipe.task}" if generative else f"{len(job.data.label_names)} labels"
    report.add("ok", "recipe", f"valid: model {recipe.model} ({job.model_config.model_type}), method "
               f"{recipe.method.name}, {kind}, {len(job.data.train)} training rows", log=log)
    check_recipe_combinations(report, recipe, log)
    if report.failures:
        return report
    log(f"preflight ({steps} optimizer steps on {PREFLIGHT_ROWS} training rows)")
    if generative:
        generative_preflight(report, recipe, job.data, log, steps=steps, rows=PREFLIGHT_ROWS)
    else:
        preflight(report, recipe, job.data, log, steps=steps)
    return report


def is_generative(recipe_path: str, overrides: list[str]) -> bool:
    """Whether the recipe asks for sft / causal-lm / masked-lm (False when it does not even load: the
    classification path then reports the recipe's own error)."""
    from tuneforge.base.recipe import GENERATIVE_TASKS
    from tuneforge.core.recipe import load_recipe
    from tuneforge.base.errors import UserError

    try:
        return load_recipe(recipe_path, overrides).task in GENERATIVE_TASKS
    except UserError:
        return False


def check_recipe_combinations_raw(report: Report, recipe_path: str, overrides: list[str], log) -> None:
    """When full validation fails on the machine (e.g. fp16 without a GPU), still name the combination."""
    from tuneforge.core.recipe import load_recipe
    from tuneforge.base.errors import UserError

    try:
        recipe = load_recipe(recipe_path, overrides)
    except UserError:
        return
    check_recipe_combinations(report, recipe, log)


def prepare_for_preflight(recipe, method, model, device, report, log):
    """Prepare ``model`` with ``method`` as training does (gradient checkpointing, device) and report whether the
    method applies; ``None`` when it does not (the failure is in ``report``)."""
    from tuneforge.base.errors import UserError

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
