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

import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from tuneforge import __version__
from tuneforge.base.machine import cpu_model, git_commit, library_versions
from tuneforge.apps.doctor.generative import generative_preflight
from tuneforge.apps.doctor.preflight import BF16_SLOWDOWN_WARNING, PREFLIGHT_ROWS, PREFLIGHT_STEPS, preflight
from tuneforge.apps.doctor.report import Report
from tuneforge.apps.doctor.run_folder import check_run_folder, is_run_folder
from tuneforge.base.errors import UserError
from tuneforge.core.engine.validate import validate_job
from tuneforge.core.tasks import LanguageModelTask, task_for
from tuneforge.core.recipe import load_recipe

CPU_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX-BF16",
             "amx_tile": "AMX tiles"}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# bf16 slower than fp32 by more than this factor is worth a warning even when the CPU claims native bf16.
MIN_FREE_DISK_GB = 2.0



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


def run_doctor(recipe_path: str | None, overrides: list[str], output_dir: str | None, steps: int = PREFLIGHT_STEPS,
               log: Callable[[str], None] = print) -> Report:
    """All checks; with a recipe, its validation, known-bad combinations and the preflight. With a run folder
    instead of a recipe: the run's integrity record and files (:mod:`tuneforge.apps.doctor.run_folder`), not the machine."""

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
    try:
        job = validate_job(recipe_path, overrides)
    except UserError as error:
        check_recipe_combinations_raw(report, recipe_path, overrides, log)
        report.add("fail", "recipe", str(error).replace("\n", "\n        "), "fix the recipe as the message says",
                   log=log)
        return report
    recipe = job.recipe
    generative = isinstance(task_for(recipe.task), LanguageModelTask)  # preflight: tuneforge.apps.doctor.generative
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


def check_recipe_combinations_raw(report: Report, recipe_path: str, overrides: list[str], log) -> None:
    """When full validation fails on the machine (e.g. fp16 without a GPU), still name the combination."""

    try:
        recipe = load_recipe(recipe_path, overrides)
    except UserError:
        return
    check_recipe_combinations(report, recipe, log)


