"""``task: sft``, ``causal-lm`` and ``masked-lm``: fine-tuning a language model on its own token loss.

What differs from classification, and lives here: the data (prompt-masked conversations, packed blocks, masked
tokens; :mod:`tuneforge.core.data.generative`), the model (a causal or masked LM with its own head), the loss
(token cross-entropy over the positions whose label is not -100, shifted by one for a causal LM — the same
loss the model computes itself), the validation metrics (token loss and perplexity, also of the untrained
model at epoch 0), the integrity probe (token logits at real positions) and the test evaluation (perplexity,
then for sft greedy and sampled answers to held-out prompts scored by exact match and ROUGE-L, into ``eval/``).
Everything else — optimizer, schedules, checkpoints and exact resume, NaN/inf guard, Ctrl-C, early stopping,
tracking, DDP, time budget, pruning in ``search`` — is the one loop's (:mod:`tuneforge.core.engine.loop`).

``model/`` ends as a plain transformers model (LoRA merged) that ``pipeline("text-generation")`` loads, or
base + adapter for prefix and prompt tuning, which :meth:`LanguageModelTask.load_trained` rebuilds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional

from tuneforge.base.atomic import write_json_atomic
from tuneforge.base.errors import UserError
from tuneforge.base.integrity import LANGUAGE_MODEL_TOLERANCE, save_and_gate
from tuneforge.base.models import load_tokenizer, resolve_model
from tuneforge.base.quiet import quiet_transformers
from tuneforge.base.recipe import EarlyStoppingConfig, Recipe
from tuneforge.core.data.batching import sorted_batches
from tuneforge.core.data.generative import (IGNORE_INDEX, EncodedExamples, GenerativeData, collate,
                                            encode_causal_blocks, encode_masked, encode_sft, load_generative_data,
                                            pack)
from tuneforge.core.evaluate.generation import evaluate_generations, generation_scores
from tuneforge.core.evaluate.learning_guard import LearningSignal
from tuneforge.core.methods import Method
from tuneforge.core.methods.layout import has_plain_model
from tuneforge.core.tasks.base import ModelSelection, Task

# The integrity gate's probe: the first validation rows, and at most this many of their token positions
# (each compares a whole vocabulary of logits: 512 x 49,152 for SmolLM2).
PROBE_ROWS = 4
PROBE_MAX_TOKENS = 512


class TokenLoss(nn.Module):
    """Mean cross-entropy over the target tokens (label != -100), as a transformers LM computes its ``loss``:
    a causal LM's logits at position t are scored against the token at t + 1."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits[:, -labels.shape[1]:]  # prompt tuning also returns logits for its virtual tokens
        if self.causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                        ignore_index=IGNORE_INDEX)


def load_language_model(recipe: Recipe, source: str | None = None):
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
        """The model inputs and ``labels`` of rows ``indices`` of ``encoded`` (padded; masked-lm: masked)."""
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


class LanguageModelTask(Task):
    """The behaviour shared by the three language-model tasks; each subclass names its task."""

    causal: ClassVar[bool] = True
    supports_activation_cache = False  # batches carry position ids and masks the cached prefix cannot replay
    supports_distillation = False
    methods: ClassVar[tuple[str, ...] | None] = ("full", "freeze", "lora", "dora", "ia3", "prefix", "prompt")
    export_formats = ("safetensors",)
    summary_keys = ("loss", "perplexity", "exact_match", "rouge_l")
    main_metric = "loss"
    learning_signals = (LearningSignal("loss", higher_is_better=False),)
    learning_fixes = (
        "a larger train.learning_rate (LoRA and prompt methods often need 1e-4 to 1e-3) or more train.epochs",
        "check that the targets are the text to learn (sft: the assistant turns; data inspect)",
        "a loss that starts low may already be the base model's best: compare with generation.evaluate_base")
    generates_text = True
    supports_search = True
    search_metric = "loss"

    def check_recipe(self, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        if recipe.generative.packing and recipe.method.name in ("prefix", "prompt"):
            raise UserError(f"generative.packing: not supported yet with method {recipe.method.name} (its virtual "
                            "tokens would be shared across the packed examples); set packing: false")
        stopping = recipe.train.early_stopping
        if stopping is not None and stopping.metric != "loss" and "metric" in stopping.model_fields_set:
            raise UserError(f"train.early_stopping.metric: {stopping.metric} is not measured for task {recipe.task}; "
                            "a language model is selected on its validation loss (metric: loss)")

    def load_data(self, recipe: Recipe) -> GenerativeData:
        return load_generative_data(recipe)

    def check_model_config(self, recipe: Recipe, model_config: Any) -> None:
        from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                            MODEL_FOR_MASKED_LM_MAPPING_NAMES)

        mapping = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if self.causal else MODEL_FOR_MASKED_LM_MAPPING_NAMES
        if model_config.model_type not in mapping:
            kind = "a decoder (causal LM)" if self.causal else "a masked language model (BERT family)"
            raise UserError(f"model {recipe.model} ({model_config.model_type}) cannot be trained as task "
                            f"{recipe.task}: it needs {kind}")

    def load_model(self, recipe: Recipe, label_names: list[str]):
        tokenizer, model = load_language_model(recipe)
        model.config.use_cache = False  # training never reuses keys/values; checkpointing needs it off
        return tokenizer, model

    def encode(self, preprocessor, split, recipe: Recipe, training: bool) -> EncodedExamples:
        encoded = encode_for_task(recipe, preprocessor, split)
        encoded.collator = Batches(recipe, preprocessor)
        return encoded

    def batches(self, encoded: EncodedExamples, index_lists: list[list[int]],
                pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
        for indices in index_lists:
            yield encoded.collator.make(encoded, indices)

    def loss_functions(self, recipe: Recipe, data, device: torch.device) -> tuple[nn.Module, nn.Module]:
        return TokenLoss(self.causal), TokenLoss(self.causal)

    def before_training(self, recipe: Recipe, data: GenerativeData, model: nn.Module, tokenizer,
                        device: torch.device, autocast_dtype: torch.dtype | None, run_dir: Path,
                        log) -> dict[str, Any]:
        """``generation.evaluate_base``: the untrained model's validation loss (``metrics.jsonl`` epoch 0) and,
        for sft, its answers to the test prompts (``eval/base``), so that the run shows what training changed."""
        if not recipe.generative.generation.evaluate_base:
            return {}
        model.to(device)
        validation_set = self.encode(tokenizer, data.validation, recipe, training=False)
        eval_batch_size = recipe.train.eval_batch_size or 2 * recipe.train.batch_size
        base = evaluate_loss(model, validation_set, validation_set.collator, eval_batch_size, device, autocast_dtype,
                             self.causal)
        log(f"base model: validation loss {base['loss']:.4f}, perplexity {base['perplexity']:.2f} "
            f"({base['tokens']} target tokens)")
        if recipe.task == "sft" and data.test is not None:
            evaluate_generations(model, tokenizer, recipe, data.test.conversations, device, run_dir / "eval" / "base",
                                 log, "base model, test")
        return {"base_validation": base, "epoch_zero": {f"validation_{k}": v for k, v in base.items()}}

    def no_learning_baseline(self, recipe: Recipe, data, facts: dict[str, Any]) -> dict[str, Any]:
        """The untrained model's validation loss (``generation.evaluate_base``; none when it was not measured, as
        in a resumed run: the guard then does not judge)."""
        return dict(facts.get("base_validation") or {})

    def encoded_facts(self, recipe: Recipe, encoded: dict[str, Any], log) -> dict[str, Any]:
        counts = data_counts(recipe, encoded)
        for note in counts["notes"]:
            log(f"note: {note}")
        if len(encoded["train"]) == 0:
            raise UserError(f"{recipe.data.train}: no training example is left after tokenization (see the notes "
                            "above)")
        return {"data": counts}

    def validation_metrics(self, model, encoded, label_names, batch_size, pad_id, device, loss_fn, autocast_dtype,
                           before_batch=None) -> dict[str, Any]:
        return evaluate_loss(model, encoded, encoded.collator, batch_size, device, autocast_dtype, self.causal)

    def describe_metrics(self, metrics: dict[str, Any]) -> str:
        return f"validation loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.2f}"

    def model_selection(self, stopping: EarlyStoppingConfig | None) -> ModelSelection:
        """The epoch of lowest validation loss is kept; ``early_stopping.patience`` stops after that many epochs
        without a lower one."""
        return ModelSelection("loss", False, stopping.patience if stopping else None, keep_best=True)

    def read_plain_model(self, folder: Path) -> nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        auto = AutoModelForCausalLM if self.causal else AutoModelForMaskedLM
        return auto.from_pretrained(folder).eval()

    def save(self, recipe: Recipe, method: Method, model: nn.Module, tokenizer, run_dir: Path, probe_set,
             pad_id: int, device: torch.device) -> nn.Module:
        """Save through the method and pass the integrity gate shared with classification runs: the run folder
        read back as ``tuneforge generate`` reads it must give the trained model's token logits on a few encoded
        validation examples (``artifacts.json``). Returns the reloaded model, so that the test evaluation scores
        what is on disk."""
        rows = list(range(min(len(probe_set), PROBE_ROWS)))
        batch = {k: v.to(device) for k, v in probe_set.collator.make(probe_set, rows).items()}
        positions, targets = probe_positions(batch, batch.pop("labels"), [len(probe_set.input_ids[i]) for i in rows],
                                             causal=self.causal)

        def carry_pooler() -> None:
            if not self.causal and has_plain_model(run_dir):
                carried = carry_unused_weights(Path(resolve_model(recipe.model)), run_dir / "model",
                                               getattr(model, "base_model_prefix", ""))
                if carried:
                    write_json_atomic(run_dir / "model" / "carried_weights.json", carried)

        checked = save_and_gate(method, model, tokenizer, run_dir, batch, targets.cpu().numpy(),
                                outputs=lambda module, inputs: token_logits(module, inputs, positions),
                                reload=lambda: self.load_trained(run_dir, recipe),
                                reloaded_with="LanguageModelTask.load_trained (as tuneforge generate loads it)",
                                after_save=carry_pooler, tolerance=LANGUAGE_MODEL_TOLERANCE,
                                max_metric_drop=recipe.export.max_metric_drop,
                                compared=f"token logits at {len(positions)} non-padding positions of {len(rows)} "
                                         f"validation rows; accuracy over the {int((targets >= 0).sum())} "
                                         + ("positions whose next token is trained" if self.causal else
                                            "masked positions"))
        return checked.reloaded

    def after_training(self, recipe: Recipe, data: GenerativeData, result, run_dir: Path, log) -> dict[str, Any]:
        """Test loss and perplexity; for sft also generations and their scores; into ``eval/test/``."""
        if data.test is None:
            return {}
        return {"test": evaluate_test(recipe, data, result, run_dir, log, self.causal)}

    def predict_command(self, run_dir: str, text: str | None, text_pair: str | None, input_file: str | None,
                        output_file: str | None, top: int) -> int:
        raise UserError(f"predict: a {self.name} run writes text, it does not predict labels; use "
                        f"`tuneforge generate {run_dir} --prompt \"...\"`" if self.generates_text else
                        f"predict: not supported yet for task {self.name} runs")

    def data_summary(self, data: GenerativeData) -> dict[str, Any]:
        return {"notes": list(data.notes)}

    def summary_lines(self, summary: dict[str, dict[str, Any]], facts: dict[str, Any]) -> list[str]:
        lines = []
        for split, metrics in summary.items():
            values = ", ".join(f"{k} {metrics[k]:.4f}" for k in self.summary_keys if isinstance(metrics.get(k), float))
            lines.append(f"  {split:<10} {values}")
        base = facts.get("base_validation")
        if base:
            lines.append(f"  base model validation loss {base['loss']:.4f}, perplexity {base['perplexity']:.2f}")
        return lines


class SupervisedFineTuningTask(LanguageModelTask):
    """``task: sft``: instruction/response pairs or chats; the loss is on the assistant's tokens only."""

    name = "sft"


class CausalLanguageModelTask(LanguageModelTask):
    """``task: causal-lm``: raw text cut into blocks; every token is predicted from the ones before it."""

    name = "causal-lm"


class MaskedLanguageModelTask(LanguageModelTask):
    """``task: masked-lm``: 15% of the tokens masked and predicted from both sides (BERT's objective)."""

    name = "masked-lm"
    causal = False
    generates_text = False
    methods = ("full", "freeze", "lora", "dora")


def evaluate_test(recipe: Recipe, data: GenerativeData, result, run_dir: Path, log, causal: bool) -> dict:
    """Test loss and perplexity; for sft also generations and their scores; into ``eval/test/``."""
    device = result.runtime.device
    encoded = encode_for_task(recipe, result.tokenizer, data.test)
    batches = Batches(recipe, result.tokenizer)
    metrics: dict[str, Any] = evaluate_loss(result.model, encoded, batches, 2 * recipe.train.batch_size, device,
                                            result.runtime.autocast_dtype, causal)
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
