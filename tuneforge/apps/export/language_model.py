"""``tuneforge export RUN --format safetensors`` for language-model runs (task sft, causal-lm, masked-lm).

The export folder holds the run's trained model as a plain transformers model (``save_pretrained`` in
safetensors: ``config.json``, ``model.safetensors``, ``generation_config.json`` where the model has one) and
its tokenizer (chat template included), so that ``AutoModelForCausalLM.from_pretrained(DIR)`` (masked-lm:
``AutoModelForMaskedLM``) and ``pipeline("text-generation", model=DIR)`` load it without tuneforge.

Parity: the export is read back with that Auto class, as a user would read it, and its token logits on a few
encoded rows of the run's validation split (recomputed from the run's recipe) are compared with the run's
model as ``tuneforge generate`` loads it (:meth:`LanguageModelTask.load_trained`): the largest |Δlogit| must
stay within :data:`TOLERANCE` and the top-1 next token (masked-lm: the token at the position) must agree on
at least ``--min-agreement`` of the token positions. The same logits go through the integrity gate shared with
classification exports (:func:`tuneforge.base.integrity.gate_export`: NaN, collapse, accuracy drop on the
trained positions), recorded in ``artifacts.json`` for ``tuneforge doctor``.

Refused ("not supported yet"): runs whose method keeps base model + adapter (prefix, prompt, or a LoRA-family
method with ``merge: false``), ``--quantize``, and ``--data`` (the parity rows are the run's validation split).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tuneforge.base.errors import UserError
from tuneforge.base.faults import fault_point
from tuneforge.base.integrity import LANGUAGE_MODEL_TOLERANCE, IntegrityError, gate_export
from tuneforge.base.models import load_tokenizer
from tuneforge.base.recipe import Recipe
from tuneforge.core.methods.layout import has_plain_model
from tuneforge.core.tasks import LanguageModelTask
from tuneforge.core.tasks.generative import probe_positions, token_logits
from tuneforge.apps.export.parity import ParityError, compare_logits, gate_key, raise_if_checks_failed
from tuneforge.apps.export.runtime import REPORT_NAME, export_versions, remove_partial_export, write_report
from tuneforge.apps.export.unfinished import mark_unfinished

# Validation rows whose token logits are compared (at most PROBE_MAX_TOKENS positions of them, see
# tuneforge.core.tasks.generative: each position compares a whole vocabulary of logits).
PARITY_ROWS = 8
# The same weights written and read back: anything beyond float noise is a lost or changed weight.
TOLERANCE = LANGUAGE_MODEL_TOLERANCE
# masked-lm: which tokens the parity batch masks (DataCollatorForLanguageModeling draws from torch's RNG).
MASK_SEED = 1234


def auto_class_name(task: LanguageModelTask) -> str:
    """The transformers Auto class an export of ``task`` loads with."""
    return "AutoModelForCausalLM" if task.causal else "AutoModelForMaskedLM"


def check_request(run_dir: Path, recipe: Recipe, quantize: str | None, data_file: str | Path | None) -> None:
    """Refuse, before anything is loaded or written, what a language-model export does not support yet."""
    if quantize is not None:
        raise UserError(f"export --quantize {quantize}: not supported yet for language models (task "
                        f"'{recipe.task}' runs); export without --quantize to get the model in its own precision")
    if data_file is not None:
        raise UserError(f"export --data: not supported yet for language models (task '{recipe.task}' runs); the "
                        "parity check reads the run's validation split, drop --data")
    if not has_plain_model(run_dir):
        raise UserError(non_mergeable_message(recipe, "the run keeps base model + adapter"))


def non_mergeable_message(recipe: Recipe, what: str) -> str:
    return (f"export: runs whose method keeps base model + adapter (method '{recipe.method.name}'; {what}) are not "
            "supported yet; train with a mergeable method (full, freeze, or lora/dora/ia3 with merge: true) to "
            "export")


@dataclass
class ProbeLogits:
    """Token logits already computed, in the shape :func:`gate_export` reads (``logits(texts, pairs)``
    and ``description``): one row per compared token position."""

    values: np.ndarray
    description: str

    def logits(self, texts, pairs=None) -> np.ndarray:
        return self.values


def parity_batch(task: LanguageModelTask, recipe: Recipe, tokenizer) -> tuple[dict, torch.Tensor, np.ndarray, str]:
    """The first :data:`PARITY_ROWS` encoded validation rows as one batch (without labels), the flat token
    positions compared, the token each of them is trained to predict (-100: none) and a description."""
    try:
        data = task.load_data(recipe)
    except UserError as error:
        raise UserError(f"export: the parity check needs the run's validation data, which cannot be read "
                        f"({error})") from None
    encoded = task.encode(tokenizer, data.validation, recipe, training=False)
    if len(encoded) == 0:
        raise UserError("export: the run's validation split has no encoded rows to check parity on (every "
                        "example was dropped at data.max_length)")
    rows = list(range(min(len(encoded), PARITY_ROWS)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MASK_SEED)
        batch = next(task.batches(encoded, [rows], tokenizer.pad_token_id))
    labels = batch.pop("labels")
    positions, targets = probe_positions(batch, labels, [encoded.lengths[i] for i in rows], causal=task.causal)
    source = (f"validation split ({recipe.data.validation})" if recipe.data.validation is not None else
              f"validation split ({recipe.data.validation_fraction:.0%} of {recipe.data.train}, seed "
              f"{recipe.train.seed})")
    return batch, positions, targets.numpy(), f"the first {len(rows)} encoded rows of the {source}"


def export_language_model(run_dir: Path, recipe: Recipe, task: LanguageModelTask, out: Path, *,
                          min_agreement: float, log: Callable[[str], None] = lambda message: None) -> tuple[Path, dict]:
    """Write ``out`` (not existing, or empty) from the language-model run ``run_dir``; return it and the
    report. Raises ParityError or IntegrityError after writing the failed report (the folder is kept for
    inspection); any other failure removes what it wrote. :func:`check_request` has passed."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

    started = time.time()
    reference = task.load_trained(run_dir, recipe)
    if not isinstance(reference, PreTrainedModel):
        raise UserError(non_mergeable_message(recipe, type(reference).__name__))
    tokenizer = load_tokenizer(run_dir / "model")
    batch, positions, targets, source = parity_batch(task, recipe, tokenizer)
    log(f"parity: token logits at {len(positions)} positions of {source}")

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    mark_unfinished(out)
    try:
        log(f"writing safetensors model and tokenizer to {out}")
        reference.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        fault_point("export-write")  # TUNEFORGE_FAULT: the reliability tests' kill -9 (docs/reliability.md)
        model_file = "model.safetensors" if (out / "model.safetensors").is_file() else "model.safetensors.index.json"
        auto = auto_class_name(task)
        report = {
            "status": "checking",
            "task": recipe.task,
            "format": "safetensors",
            "quantize": None,
            "model_file": model_file,
            "model_class": type(reference).__name__,
            "load_with": f"transformers.{auto}.from_pretrained(DIR), AutoTokenizer.from_pretrained(DIR)",
            "files": sorted(p.name for p in out.iterdir() if p.name != REPORT_NAME),
            "dtype": str(next(reference.parameters()).dtype).removeprefix("torch."),
            "max_length": recipe.data.max_length,
            "method": recipe.method.name,
            "run_dir": str(run_dir.resolve()),
            "created": datetime.now().isoformat(timespec="seconds"),
            "versions": export_versions(),
        }
        write_report(out, report)

        loader = AutoModelForCausalLM if task.causal else AutoModelForMaskedLM
        candidate = loader.from_pretrained(out).eval()
        with torch.inference_mode():
            expected = token_logits(reference, batch, positions).numpy()
            actual = token_logits(candidate, batch, positions).numpy()
        parity = compare_logits(expected, actual, min_agreement)
        within = parity["max_abs_logit_diff"] <= TOLERANCE
        parity.update(tolerance=TOLERANCE, passed=bool(parity["passed"] and within))
        report["parity"] = {
            "reference": "the run's model (model/), as tuneforge generate loads it",
            "candidate": f"the export read back with {auto}.from_pretrained",
            "rows": source,
            "unit": "token positions",
            "compared": (f"token logits at {len(positions)} non-padding positions; agreement: the top-1 "
                         + ("next token" if task.causal else "token") + " at each position"),
            **parity,
        }
        log(f"parity: agreement {parity['agreement']:.2%} on {parity['n_examples']} token positions, max |Δlogit| "
            f"{parity['max_abs_logit_diff']:.3g} (tolerance {TOLERANCE:g})")
        # The integrity gate (docs/trust.md), as for classification exports; its "accuracy" is the top-1
        # token accuracy on the positions the run trains (the answer tokens of sft, the masked tokens).
        gate = gate_export(ProbeLogits(expected, "run folder, PyTorch"),
                           ProbeLogits(actual, f"export folder, {auto}.from_pretrained"), [], None, targets, out,
                           quantized=False, max_metric_drop=recipe.export.max_metric_drop, run_dir=run_dir,
                           key=gate_key(out, run_dir))
        report["integrity"] = dict(gate["probe"])
        raise_if_checks_failed(out, report, parity, gate, run_dir, parity_message=failure_message)
        report["status"] = "ok"
        report["seconds"] = round(time.time() - started, 1)
        write_report(out, report)
        return out, report
    except (ParityError, IntegrityError):
        raise  # the folder stays, with its failed report, for inspection
    except BaseException:
        remove_partial_export(out, created)
        raise


def failure_message(parity: dict, where: Path) -> str:
    return (f"export failed its parity check: the exported model's top-1 tokens agree with the run's model on "
            f"{parity['agreement']:.2%} of {parity['n_examples']} token positions (needed "
            f"{parity['min_agreement']:.0%}), max |Δlogit| {parity['max_abs_logit_diff']:.4g} (tolerance "
            f"{parity['tolerance']:g}); details in {where}. Do not ship this model")
