"""``tuneforge plan``: memory and time of every method on a recipe, estimated without training the model,
and a recommendation that fits the user's memory and time.

For each method a child process (so that what it measures is its own) loads and prepares the model exactly
as ``tuneforge train`` would and runs a handful of optimizer steps on batches of the recipe's data — the
steps are thrown away, nothing is saved. From that:

- **weights, gradients, AdamW states, best-epoch copy**: counted from the parameters (fp32; two AdamW states
  per trained parameter; the loop keeps a copy of the best epoch's trained weights);
- **activations**: what the training steps hold beyond those, measured as the growth of the process's peak
  resident memory on the epoch's widest batch (the longest examples, grouped together). That is at least
  what autograd saves for backward (also counted, with saved-tensor hooks) and usually more: the C
  allocator keeps freed intermediates. The same measurement with gradient checkpointing on gives the
  checkpointed figure. Other batch sizes scale the activations linearly;
- **activation cache**: methods that keep the bottom blocks frozen for the whole run (freeze, gradual) have
  their output cached once (``train.activation_cache``): tokens x hidden x 4 bytes, up to 1 GiB in RAM;
- **peak** = runtime + the largest of loading (measured), training (all of the above) and saving (the
  optimizer and the best copy are still alive while one more copy of the weights is written or reloaded).
  The runtime is this process's resident memory once libraries and data are in, before any model (on a GPU,
  a typical CUDA context instead: not measured here);
- **time per epoch**: the timed steps (after a warm-up) times the number of batches, plus the validation
  pass (one eval batch timed); with the activation cache, only the part of each step above the cached
  blocks, plus the one-off pass through them spread over the epochs. With ``--gpu`` the time is a FLOP count over the GPU's published bf16
  throughput at an assumed utilisation — an estimate, never measured here.

The recommendation takes the most accurate method (the tiers of :data:`QUALITY`) whose peak fits the memory
(less :data:`HEADROOM`) and at least one epoch fits the time, trying gradient checkpointing and then smaller
batches (gradient accumulation keeping the effective batch) before falling back to a less accurate method.
It explains itself in plain words. This module writes no files (``--json`` is the command's).

Everything task-specific goes through the recipe's Task (:mod:`tuneforge.core.tasks`): its data, encoding,
batches, model and loss, so the language-model tasks (``sft``, ``causal-lm``, ``masked-lm``) are planned like
classification. Their logits are ``[batch, sequence, vocabulary]``: the activations count them (held until
backward, and their gradient) and what the token loss saves. Methods the task does not support
(``Task.methods``) are left out with a note.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneforge.base.errors import UserError
from tuneforge.base.models import load_tokenizer as load_model_tokenizer, resolve_model
from tuneforge.base.quiet import quiet_libraries
from tuneforge.base.recipe import Recipe
from tuneforge.core.data.batching import sorted_batches
from tuneforge.core.engine import loop  # noqa: F401  (the libraries a training process holds: in the runtime)
from tuneforge.core.engine.optim import build_optimizer
from tuneforge.core.engine.runtime import physical_cores
from tuneforge.core.engine.validate import validate_job
from tuneforge.core.methods import build_method, method_names, method_spec
from tuneforge.core.methods.injection import layer_stack
from tuneforge.core.recipe import validate_recipe
from tuneforge.core.tasks import LanguageModelTask, task_for

MB = 1024 ** 2
GB = 1024 ** 3

# Expected accuracy, best first: the seed's qualitative guidance, in tiers. Within a tier the faster wins.
QUALITY: dict[str, tuple[int, str]] = {
    "full": (1, "every weight adapts: usually the most accurate"),
    "gradual": (2, "ends up training every weight (ULMFiT); close to full fine-tuning, safer on small data"),
    "lora": (2, "low-rank updates: typically within about a point of full fine-tuning"),
    "dora": (2, "LoRA with trained magnitudes: about LoRA's accuracy, a little slower"),
    "adapter": (2, "bottleneck adapters: typically within about a point of full fine-tuning"),
    "adalora": (2, "LoRA with adaptive ranks: about LoRA's accuracy"),
    "ia3": (3, "rescaling vectors only: usually a little below LoRA"),
    "freeze": (4, "trains the head only: a baseline, clearly below the methods that adapt the body"),
    "ptuning": (4, "virtual tokens from a small encoder: learns slowly and reaches less on small models"),
    "prefix": (4, "key/value prefixes: learns slowly and reaches less on small models"),
    "prompt": (5, "virtual input tokens only: competitive only on very large models"),
}

# GPU memory (GiB) and dense bf16 tensor throughput (TFLOP/s) from the vendors' data sheets.
GPUS: dict[str, tuple[float, float]] = {
    "t4": (16, 65), "v100": (16, 125), "v100-32gb": (32, 125), "a10g": (24, 70), "l4": (24, 121),
    "rtx3090": (24, 71), "rtx4090": (24, 165), "a100-40gb": (40, 312), "a100": (80, 312), "h100": (80, 989),
    "h200": (141, 989),
}
GPU_UTILISATION = 0.35  # share of the peak throughput a fine-tuning step reaches (an assumption, see docs)
# Share of the memory budget kept free: the estimates land within about 15% of measured peaks
# (tests/test_plan.py), so a plan that fills the budget to the last byte would be a gamble.
HEADROOM = 0.10
CUDA_CONTEXT_BYTES = 600 * MB  # CUDA context + allocator reserve (typical, not measured here)
IN_MEMORY_CACHE_LIMIT = 1 << 30  # tuneforge.core.engine.activation_cache keeps caches up to this size in RAM


@dataclass
class MemoryEstimate:
    """Bytes, per component, for one method at the recipe's batch size."""

    weights: int
    gradients: int
    optimizer: int
    best_copy: int
    activations: int
    activations_checkpointed: int
    runtime: int
    load: int = 0
    activation_cache: int = 0

    def peak(self, checkpointing: bool = False, batch_scale: float = 1.0, best_copy_on_device: bool = True) -> int:
        """Peak resident bytes of a ``tuneforge train`` run (runtime included): the largest of loading,
        training and saving (which holds the optimizer and the best copy while it writes or reloads one more
        copy of the weights)."""
        activations = self.activations_checkpointed if checkpointing else self.activations
        best = self.best_copy if best_copy_on_device else 0
        kept = self.optimizer + best + self.activation_cache
        training = self.weights + self.gradients + kept + activations * batch_scale
        saving = 2 * self.weights + kept
        return int(self.runtime + max(self.load, training, saving))


@dataclass
class MethodEstimate:
    """What ``plan`` found for one method."""

    method: str
    learning_rate: float
    trainable_params: int = 0
    total_params: int = 0
    memory: MemoryEstimate | None = None
    gradients_through_body: bool = True
    supports_checkpointing: bool = True
    step_seconds: float | None = None
    forward_seconds: float | None = None
    epoch_seconds: float | None = None
    epoch_seconds_checkpointed: float | None = None
    flops_per_epoch: float | None = None
    error: str | None = None


@dataclass
class Option:
    """One way to run a method: with or without checkpointing, at some batch size."""

    method: str
    checkpointing: bool
    batch_size: int
    grad_accum_steps: int
    peak_bytes: int
    epoch_seconds: float
    epochs: int
    fits_memory: bool
    fits_time: bool

    @property
    def fits(self) -> bool:
        return self.fits_memory and self.fits_time


@dataclass
class Plan:
    recipe: str
    model: str
    device: str
    batch_size: int
    max_length: int
    width: int
    train_rows: int
    memory_budget_gb: float | None
    minutes: float | None
    runtime_bytes: int
    methods: list[MethodEstimate] = field(default_factory=list)
    recommendation: Option | None = None
    explanation: list[str] = field(default_factory=list)
    task: str = "classification"
    # methods not estimated because the task (or the recipe with that method) does not support them: the reason
    left_out: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- measuring


def resident_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def layer_blocks(model: nn.Module) -> list[nn.Module]:
    return layer_stack(model)


def activation_bytes(model: nn.Module, batch: dict[str, torch.Tensor],
                     loss_fn: nn.Module | None = None) -> tuple[int, int, int, int]:
    """Bytes autograd keeps for backward in one forward pass and the loss: (total, outside the blocks, the
    largest block, the largest block input). Parameters are not counted (they are weights). Outside the blocks
    also counts the logits, which the step holds until backward, and their gradient, which backward starts
    with: a language model's ``[batch, sequence, vocabulary]`` logits are a large share of its activations."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    blocks = layer_blocks(model)
    seen: dict[int, int] = {}
    per_block = [0] * len(blocks)
    outside = 0
    current: list[int | None] = [None]
    block_input = [0]

    def pack(tensor: torch.Tensor):
        nonlocal outside
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in parameters and pointer not in seen:
            seen[pointer] = storage.nbytes()
            if current[0] is None:
                outside += storage.nbytes()
            else:
                per_block[current[0]] += storage.nbytes()
        return tensor

    hooks = []
    for index, block in enumerate(blocks):
        def enter(module, args, kwargs, index=index):
            current[0] = index
            hidden = args[0] if args else next(iter(kwargs.values()))
            block_input[0] = max(block_input[0], hidden.numel() * hidden.element_size())

        hooks.append(block.register_forward_pre_hook(enter, with_kwargs=True))
        hooks.append(block.register_forward_hook(lambda module, args, output: current.__setitem__(0, None)))
    was_training = model.training
    model.train()
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            logits = model(**inputs).logits
            if loss_fn is not None and "labels" in batch:
                loss_fn(logits.float(), batch["labels"])
        storage = logits.untyped_storage()
        held = storage.nbytes() * (1 if storage.data_ptr() in seen else 2)  # (the logits,) their gradient
        outside += held
        del logits
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return sum(seen.values()) + held, outside, max(per_block) if per_block else 0, block_input[0]


def synthetic_batch(tokenizer, batch_size: int, width: int, vocab_size: int, labels: int = 2,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """A full batch of random tokens, ``width`` wide with no padding: the most memory a batch can take."""
    generator = torch.Generator().manual_seed(seed)
    low = min(1000, vocab_size // 2)
    ids = torch.randint(low, vocab_size, (batch_size, width), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.randint(0, labels, (batch_size,), generator=generator)}
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        batch["token_type_ids"] = torch.zeros_like(ids)
    return batch


def load_tokenizer(recipe):
    return load_model_tokenizer(resolve_model(recipe.model))


def method_recipe(recipe: Recipe, name: str) -> tuple[dict[str, Any], float]:
    """The recipe (as a raw dict) that trains ``name`` instead of the recipe's method, with its learning rate:
    the recipe's for its own method, the method's default for the others."""
    rate = recipe.train.learning_rate if name == recipe.method.name else method_spec(name).default_learning_rate
    raw = recipe.to_yaml_dict()
    if name != recipe.method.name:
        raw["method"] = {"name": name}
    raw["train"]["learning_rate"] = rate
    return raw, rate


def supported_methods(recipe: Recipe, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the methods the recipe's task can train, {left-out method: why}): the task's ``methods`` and its recipe
    checks (e.g. sft packing with prompt tuning)."""
    task = task_for(recipe.task)
    kept, left_out = [], {}
    for name in names:
        if task.methods is not None and name not in task.methods:
            left_out[name] = f"not supported for task {recipe.task} (it supports {', '.join(task.methods)})"
            continue
        try:
            task.check_recipe(validate_recipe(method_recipe(recipe, name)[0], source="plan"))
        except UserError as error:
            left_out[name] = str(error)
            continue
        kept.append(name)
    return kept, left_out


# ----------------------------------------------------------------------------- the plan


def make_plan(recipe_path: str, overrides: list[str], memory_gb: float | None, minutes: float | None,
              gpu: str | None, methods: list[str] | None = None, steps: int = 3, log=print) -> Plan:
    """Estimate every method on the recipe and recommend one; no training, no files written."""
    if gpu is not None and gpu.lower() not in GPUS:
        raise UserError(f"--gpu {gpu}: unknown GPU; known: {', '.join(GPUS)} (or give --memory-gb)")
    if memory_gb is not None and memory_gb <= 0:
        raise UserError("--memory-gb must be positive")
    if minutes is not None and minutes <= 0:
        raise UserError("--minutes must be positive")
    job = validate_job(recipe_path, overrides)
    recipe, data = job.recipe, job.data
    config = recipe.train
    task = task_for(recipe.task)
    names, left_out = supported_methods(recipe, methods or method_names())
    for name, reason in left_out.items():
        log(f"  {name:<8} left out: {reason}")
    if not names:
        raise UserError(f"--methods: none of {', '.join(left_out)} can be planned for this recipe: "
                        + "; ".join(left_out.values()))

    # The runtime: this process once the libraries and the data are in, before any model is loaded.
    runtime_bytes = resident_bytes() if gpu is None else CUDA_CONTEXT_BYTES
    if gpu is not None and memory_gb is None:
        memory_gb = GPUS[gpu.lower()][0]
    log(f"plan for {recipe.name}: measuring {len(names)} method(s) on {recipe.model} "
        f"(a few steps each in a child process; nothing is saved)")
    tokenizer = load_tokenizer(recipe)
    train_set = task.encode(tokenizer, data.train, recipe, training=True)  # [task] tokens, prompt-masked, packed
    validation_set = task.encode(tokenizer, data.validation, recipe, training=False)
    if len(train_set) == 0:
        raise UserError(f"{recipe.data.train}: no training example is left after tokenization")
    width = max(train_set.lengths)
    batches = task.training_batches(recipe, train_set, config.batch_size, random.Random(config.seed))
    widths = [max(train_set.lengths[i] for i in b) for b in batches]
    mean_width = sum(widths) / len(widths)
    # The batches timed (after one warm-up): full-size ones whose width is nearest the epoch's mean width.
    full = [b for b in batches if len(b) == config.batch_size] or batches
    timed = sorted(full, key=lambda b: abs(max(train_set.lengths[i] for i in b) - mean_width))[:steps + 1]
    eval_batches = sorted_batches(validation_set.lengths, config.eval_batch_size or 2 * config.batch_size)
    pad = tokenizer.pad_token_id
    # The memory peak of an epoch comes with its widest batch (the longest examples, grouped together).
    widest = next(task.batches(train_set, [max(batches, key=lambda b: (max(train_set.lengths[i] for i in b),
                                                                        len(b)))], pad))
    middle = eval_batches[len(eval_batches) // 2]
    eval_batch = {k: v for k, v in next(task.batches(validation_set, [middle], pad)).items() if k != "labels"}
    epoch_tokens = sum(w * len(b) for w, b in zip(widths, batches))
    eval_tokens = sum(max(validation_set.lengths[i] for i in b) * len(b) for b in eval_batches)
    cache_tokens = sum(train_set.lengths) + sum(validation_set.lengths)

    plan = Plan(recipe=recipe.name, model=recipe.model, device=gpu or "cpu", batch_size=config.batch_size,
                max_length=recipe.data.max_length, width=width, train_rows=len(data.train),
                memory_budget_gb=memory_gb, minutes=minutes, runtime_bytes=runtime_bytes, task=recipe.task,
                left_out=left_out)
    loss_fn, _ = task.loss_functions(recipe, data, torch.device("cpu"))  # [task] cross-entropy, token loss, ...
    with tempfile.TemporaryDirectory(prefix="tuneforge-plan-") as folder:
        batches_file = Path(folder) / "batches.pt"
        torch.save({"label_names": data.label_names, "widest": widest,
                    "timed": list(task.batches(train_set, timed, pad)), "eval": eval_batch, "loss": loss_fn,
                    "eval_batches": len(eval_batches), "batches_per_epoch": len(batches)}, batches_file)
        for name in names:
            estimate = estimate_method(recipe, name, batches_file, runtime_bytes, cache_tokens)
            if estimate.error is None and gpu is not None:
                _gpu_time(estimate, gpu, epoch_tokens, eval_tokens)
            plan.methods.append(estimate)
            if estimate.error:
                log(f"  {name:<8} not estimated: {estimate.error}")
            else:
                log(f"  {name:<8} peak {estimate.memory.peak() / GB:.2f} GB, "
                    f"{estimate.epoch_seconds / 60:.1f} min/epoch")
    recommend(plan, recipe)
    return plan


def estimate_method(recipe, name: str, batches_file: Path, runtime_bytes: int, cache_tokens: int) -> MethodEstimate:
    """Measure one method in a fresh child process (so the memory it reports is its own) and turn the
    measurements into a :class:`MethodEstimate`."""
    raw, rate = method_recipe(recipe, name)
    estimate = MethodEstimate(method=name, learning_rate=rate)
    request = json.dumps({"recipe": raw, "batches": str(batches_file)})
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    child = subprocess.run([sys.executable, "-c", "from tuneforge.apps.plan import probe_main; probe_main()"],
                           input=request, capture_output=True, text=True, env=env)
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        error = [line for line in child.stderr.splitlines() if line.strip()]
        estimate.error = error[-1] if error else f"the measuring process exited with {child.returncode}"
        return estimate
    probe = json.loads(lines[-1])
    if probe.get("error"):
        estimate.error = probe["error"]
        return estimate
    trained = probe["trainable_params"] * 4
    estimate.trainable_params, estimate.total_params = probe["trainable_params"], probe["total_params"]
    estimate.gradients_through_body = probe["gradients_through_body"]
    estimate.supports_checkpointing = probe["supports_checkpointing"]
    # What the training steps hold beyond weights, gradients and AdamW states is the activations as the
    # allocator keeps them: at least what autograd saves, usually more (freed intermediates the C allocator
    # does not hand back).
    fixed = probe["weights_bytes"] + 3 * trained
    activations = max(probe["saved_bytes"], probe["train_bytes"] - fixed)
    if probe["train_bytes_checkpointed"] is not None:
        checkpointed = max(probe["saved_bytes_checkpointed"], probe["train_bytes_checkpointed"] - fixed)
    else:
        checkpointed = activations
    # the loop caches the frozen bottom only where the task can replay it (not language models' batches)
    depth = probe["frozen_prefix_depth"] if (
        recipe.train.activation_cache and task_for(recipe.task).supports_activation_cache) else 0
    cache = 0
    if depth:
        cache = min(cache_tokens * probe["hidden_size"] * 4, IN_MEMORY_CACHE_LIMIT)
    estimate.memory = MemoryEstimate(
        weights=probe["weights_bytes"], gradients=trained, optimizer=2 * trained, best_copy=trained,
        activations=activations, activations_checkpointed=min(checkpointed, activations), runtime=runtime_bytes,
        load=probe["load_bytes"], activation_cache=cache)
    estimate.step_seconds, estimate.forward_seconds = probe["step_seconds"], probe["forward_seconds"]
    estimate.epoch_seconds = probe["batches_per_epoch"] * probe["step_seconds"] + probe["eval_seconds"]
    layers = probe["num_layers"]
    if depth and layers:
        # With the activation cache the frozen bottom runs once for the whole run, not every step: each step
        # keeps its backward (only the layers above train) and the share of the forward above the cached
        # blocks (blocks take about equal time). The one-off pass is spread over the recipe's epochs.
        above = (layers - depth) / layers
        backward = probe["step_seconds"] - probe["forward_seconds"]
        cached_step = backward + probe["forward_seconds"] * above
        one_off = (probe["batches_per_epoch"] * probe["forward_seconds"] + probe["eval_seconds"]) * (1 - above)
        estimate.epoch_seconds = (probe["batches_per_epoch"] * cached_step + probe["eval_seconds"] * above
                                  + one_off / recipe.train.epochs)
    # gradient checkpointing recomputes each block's forward once during backward
    estimate.epoch_seconds_checkpointed = estimate.epoch_seconds + (
        probe["batches_per_epoch"] * probe["forward_seconds"] if estimate.gradients_through_body else 0.0)
    return estimate


def peak_resident_bytes() -> int:
    """This process's peak resident bytes since the last :func:`reset_peak_resident` (Linux), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_resident() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def probe_main() -> None:
    """The child of :func:`estimate_method`: load, prepare, count, time a few steps; print one JSON line."""
    quiet_libraries()
    request = json.loads(sys.stdin.read())
    try:
        print(json.dumps(probe(request["recipe"], Path(request["batches"]))))
    except UserError as error:
        print(json.dumps({"error": str(error)}))


def probe(raw: dict, batches_file: Path) -> dict:
    recipe = validate_recipe(raw, source="plan")
    task = task_for(recipe.task)
    # the parent's own file, written moments ago: batches and the task's loss module (pickled, hence not weights_only)
    work = torch.load(batches_file, weights_only=False)
    torch.set_num_threads(recipe.train.num_threads or physical_cores())
    torch.manual_seed(recipe.train.seed)
    before = resident_bytes()
    reset_peak_resident()
    _, model = task.load_model(recipe, work["label_names"])  # [task] a classifier, or a language model
    method = build_method(recipe.method)
    model = method.prepare(model)
    # the widest trainable set the run reaches (gradual unfreezing: its last epoch)
    method.on_epoch_start(model, recipe.train.epochs - 1)
    load_bytes = peak_resident_bytes() - before
    trainable = [p for _, p in method.optimizer_parameters(model) if p.requires_grad]
    blocks = layer_blocks(model)
    optimizer = build_optimizer(model, method.optimizer_parameters(model), recipe.train)
    loss_fn = work["loss"]
    model.train()
    timings: list[tuple[float, float]] = []

    def step(batch: dict, number: int) -> None:
        batch = dict(batch)
        labels = batch.pop("labels")
        start = time.perf_counter()
        logits = model(**batch).logits
        forward_done = time.perf_counter()
        loss_fn(logits.float(), labels).backward()
        optimizer.step()
        method.on_optimizer_step(model, number, 1000)
        optimizer.zero_grad(set_to_none=True)
        timings.append((time.perf_counter() - start, forward_done - start))

    # Peaks only grow, so the smaller one first: the widest batch with gradient checkpointing ...
    supports_checkpointing = bool(getattr(model, "supports_gradient_checkpointing", False))
    train_bytes_checkpointed = None
    if supports_checkpointing:
        reset_peak_resident()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        step(work["widest"], 1)
        model.gradient_checkpointing_disable()
        train_bytes_checkpointed = peak_resident_bytes() - before
    # ... then as in training: a warm-up step, the timed steps, the epoch's widest batch (the memory peak)
    reset_peak_resident()
    timings.clear()
    for number, batch in enumerate(work["timed"] + [work["widest"]], start=2):
        step(batch, number)
    train_bytes = peak_resident_bytes() - before  # weights (paged in by the first forward), gradients, states, activations
    timed = timings[1:-1] or timings
    step_times, forward_times = [t for t, _ in timed], [f for _, f in timed]
    saved, outside, largest_block, block_input = activation_bytes(model, work["widest"], loss_fn)
    checkpointed = outside + len(blocks) * block_input + largest_block if saved > outside else saved
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model(**work["eval"])
        eval_seconds = work["eval_batches"] * (time.perf_counter() - start)
    config = getattr(model, "config", None)
    return {
        "trainable_params": sum(p.numel() for p in trainable),
        "total_params": sum(p.numel() for p in model.parameters()),
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "load_bytes": load_bytes, "train_bytes": train_bytes, "train_bytes_checkpointed": train_bytes_checkpointed,
        "saved_bytes": saved, "saved_bytes_checkpointed": min(checkpointed, saved),
        "gradients_through_body": saved > outside, "supports_checkpointing": supports_checkpointing,
        "frozen_prefix_depth": method.frozen_prefix_depth(len(blocks), recipe.train.epochs),
        "num_layers": len(blocks),
        "hidden_size": int(getattr(config, "hidden_size", 0) or 0),
        "step_seconds": sum(step_times) / max(len(step_times), 1),
        "forward_seconds": sum(forward_times) / max(len(forward_times), 1),
        "eval_seconds": eval_seconds, "batches_per_epoch": work["batches_per_epoch"],
    }


def _gpu_time(estimate: MethodEstimate, gpu: str, epoch_tokens: int, eval_tokens: int) -> None:
    """Replace the measured CPU time by a FLOP-count estimate on ``gpu``."""
    _, tflops = GPUS[gpu.lower()]
    share = estimate.trainable_params / max(estimate.total_params, 1)
    flops_per_token = 2.0 * estimate.total_params  # forward: 2 FLOPs per weight per token
    backward = (1.0 if estimate.gradients_through_body else 0.0) + 2.0 * share  # input grads + weight grads
    flops = epoch_tokens * flops_per_token * (1 + backward) + eval_tokens * flops_per_token
    seconds = flops / (tflops * 1e12 * GPU_UTILISATION)
    ratio = estimate.epoch_seconds_checkpointed / estimate.epoch_seconds if estimate.epoch_seconds else 1.0
    estimate.flops_per_epoch = flops
    estimate.epoch_seconds = seconds
    estimate.epoch_seconds_checkpointed = seconds * ratio


# ----------------------------------------------------------------------------- recommending


def options_for(estimate: MethodEstimate, plan: Plan, recipe) -> list[Option]:
    """Ways to run the method: recipe batch, then checkpointing, then halved batches (accumulating)."""
    budget = (1 - HEADROOM) * plan.memory_budget_gb * GB if plan.memory_budget_gb else None
    seconds = plan.minutes * 60 if plan.minutes else None
    options = []
    batch = recipe.train.batch_size
    checkpoint_choices = [False, True] if estimate.supports_checkpointing and estimate.gradients_through_body else [False]
    best_on_device = plan.device == "cpu"
    while batch >= 1:
        scale = batch / recipe.train.batch_size
        for checkpointing in checkpoint_choices:
            peak = estimate.memory.peak(checkpointing, scale, best_on_device)
            epoch = estimate.epoch_seconds_checkpointed if checkpointing else estimate.epoch_seconds
            epochs = recipe.train.epochs if seconds is None else min(recipe.train.epochs, int(seconds // epoch))
            options.append(Option(method=estimate.method, checkpointing=checkpointing, batch_size=batch,
                                  grad_accum_steps=recipe.train.grad_accum_steps * recipe.train.batch_size // batch,
                                  peak_bytes=peak, epoch_seconds=epoch, epochs=epochs,
                                  fits_memory=budget is None or peak <= budget, fits_time=epochs >= 1))
        if batch == 1:
            break
        batch = max(1, batch // 2)
    return options


def recommend(plan: Plan, recipe) -> None:
    """Choose the most accurate option that fits and explain the choice in plain words."""
    candidates = [e for e in plan.methods if e.error is None]
    if not candidates:
        plan.explanation.append("no method could be estimated on this model; see the errors above")
        return
    all_options = {e.method: options_for(e, plan, recipe) for e in candidates}

    def key(option: Option):
        tier = QUALITY.get(option.method, (6, ""))[0]
        return (tier, option.checkpointing or option.batch_size < recipe.train.batch_size,
                -option.batch_size, option.checkpointing, option.epoch_seconds)

    fitting = sorted((o for options in all_options.values() for o in options if o.fits), key=key)
    budget_words = []
    if plan.memory_budget_gb:
        budget_words.append(f"{plan.memory_budget_gb:g} GB of memory ({(1 - HEADROOM) * plan.memory_budget_gb:.2f} GB "
                            f"usable: {100 * HEADROOM:.0f}% is kept free for estimate error)")
    if plan.minutes:
        budget_words.append(f"{plan.minutes:g} minutes")
    budget_text = " and ".join(budget_words) or "no stated limits"
    if not fitting:
        smallest = min((o for options in all_options.values() for o in options), key=lambda o: o.peak_bytes)
        plan.explanation.append(
            f"nothing fits {budget_text}: the smallest option, {smallest.method} at batch {smallest.batch_size}"
            f"{' with gradient checkpointing' if smallest.checkpointing else ''}, needs "
            f"{smallest.peak_bytes / GB:.2f} GB and {smallest.epoch_seconds / 60:.1f} min per epoch. Use a smaller "
            "model, shorter max_length, or more memory/time.")
        return
    best = fitting[0]
    plan.recommendation = best
    estimate = next(e for e in candidates if e.method == best.method)
    words = plan.explanation
    words.append(
        f"recommended: {best.method} — {QUALITY.get(best.method, (0, 'no accuracy tier known'))[1]}. It needs "
        f"{best.peak_bytes / GB:.2f} GB at peak and {best.epoch_seconds / 60:.1f} min per epoch, which fits "
        f"{budget_text}.")
    if isinstance(task_for(plan.task), LanguageModelTask):
        words.append(f"task {plan.task}: the accuracy tiers stand for the expected validation loss (lower is better); "
                     "`tuneforge compare` measures it.")
    words.append(breakdown(estimate, best, plan))
    if best.checkpointing or best.batch_size < recipe.train.batch_size:
        plain = next(o for o in all_options[best.method] if not o.checkpointing and o.batch_size == recipe.train.batch_size)
        changes = []
        if best.checkpointing:
            changes.append("gradient checkpointing (recomputes each block's forward pass in backward: slower)")
        if best.batch_size < recipe.train.batch_size:
            changes.append(f"batch {best.batch_size} with {best.grad_accum_steps} accumulation steps (same effective "
                           f"batch {best.batch_size * best.grad_accum_steps})")
        words.append(f"as the recipe stands it would need {plain.peak_bytes / GB:.2f} GB; " + " and ".join(changes)
                     + " bring it under the budget.")
    better = [e for e in candidates if QUALITY.get(e.method, (6,))[0] < QUALITY.get(best.method, (6,))[0]]
    for other in sorted(better, key=lambda e: QUALITY.get(e.method, (6,))[0]):
        options = all_options[other.method]
        smallest = min(options, key=lambda o: o.peak_bytes)
        if not any(o.fits_memory for o in options):
            words.append(f"{other.method} would be more accurate but needs at least {smallest.peak_bytes / GB:.2f} GB "
                         f"(batch {smallest.batch_size}{', checkpointing' if smallest.checkpointing else ''}): over "
                         f"the {(1 - HEADROOM) * plan.memory_budget_gb:.2f} GB usable.")
        elif not any(o.fits for o in options):
            fastest = min(options, key=lambda o: o.epoch_seconds)
            words.append(f"{other.method} would be more accurate but one epoch takes {fastest.epoch_seconds / 60:.1f} min:"
                         f" over {plan.minutes:g} minutes.")
    if plan.minutes and best.epochs < recipe.train.epochs:
        words.append(f"{best.epochs} of the recipe's {recipe.train.epochs} epochs fit in {plan.minutes:g} minutes.")
    words.append("settings: " + " ".join(settings(best, estimate, recipe)))


def breakdown(estimate: MethodEstimate, option: Option, plan: Plan) -> str:
    m = estimate.memory
    scale = option.batch_size / plan.batch_size
    activations = (m.activations_checkpointed if option.checkpointing else m.activations) * scale
    runtime = "CUDA context" if plan.device != "cpu" else "Python/torch runtime"
    return (f"memory: weights {m.weights / MB:.0f} MB, gradients {m.gradients / MB:.0f} MB, AdamW states "
            f"{m.optimizer / MB:.0f} MB, best-epoch copy {m.best_copy / MB:.0f} MB, activations {activations / MB:.0f} MB "
            f"(batch {option.batch_size} x {plan.width} tokens), {runtime} {m.runtime / MB:.0f} MB; "
            f"{estimate.trainable_params:,} of {estimate.total_params:,} parameters train "
            f"({100 * estimate.trainable_params / max(estimate.total_params, 1):.2f}%).")


def settings(option: Option, estimate: MethodEstimate, recipe) -> list[str]:
    items = [f"--set method.name={option.method}" if option.method != recipe.method.name else "",
             f"--set train.learning_rate={estimate.learning_rate:g}"]
    if option.checkpointing:
        items.append("--set train.gradient_checkpointing=true")
    if option.batch_size != recipe.train.batch_size:
        items += [f"--set train.batch_size={option.batch_size}", f"--set train.grad_accum_steps={option.grad_accum_steps}"]
    if option.epochs != recipe.train.epochs:
        items.append(f"--set train.epochs={option.epochs}")
    return [item for item in items if item]


def format_plan(plan: Plan) -> str:
    """The plan as text for a person: one table row per method, then the recommendation."""
    where = f"GPU {plan.device} (times: FLOP estimate)" if plan.device != "cpu" else "this machine (CPU, times measured)"
    task = "" if plan.task == "classification" else f" (task {plan.task})"
    lines = [f"plan for {plan.recipe}{task}: model {plan.model}, {plan.train_rows} training rows, batch "
             f"{plan.batch_size}, widest batch {plan.width} tokens; {where}",
             "",
             f"{'method':<9} {'trainable':>10} {'share':>7} {'weights':>8} {'grads':>7} {'AdamW':>7} {'activ.':>7} "
             f"{'act.ckpt':>8} {'peak':>8} {'peak ckpt':>9} {'min/epoch':>9}"]
    for e in plan.methods:
        if e.error:
            lines.append(f"{e.method:<9} not supported: {e.error}")
            continue
        m = e.memory
        ckpt = f"{m.peak(True) / GB:.2f} GB" if e.supports_checkpointing and e.gradients_through_body else "–"
        lines.append(f"{e.method:<9} {e.trainable_params:>10,} {100 * e.trainable_params / e.total_params:>6.2f}% "
                     f"{m.weights / MB:>6.0f}MB {m.gradients / MB:>5.0f}MB {m.optimizer / MB:>5.0f}MB "
                     f"{m.activations / MB:>5.0f}MB {m.activations_checkpointed / MB:>6.0f}MB "
                     f"{m.peak() / GB:>5.2f} GB {ckpt:>9} {e.epoch_seconds / 60:>9.1f}")
    for name, reason in plan.left_out.items():
        lines.append(f"{name:<9} left out: {reason}")
    runtime = "CUDA context (typical)" if plan.device != "cpu" else "Python/torch runtime (measured)"
    lines += ["", f"peak = runtime + max(training, loading/saving); {runtime}: {plan.runtime_bytes / MB:.0f} MB", ""]
    lines += [f"- {line}" if not line.startswith("recommended") else line for line in plan.explanation]
    return "\n".join(lines)
