"""The support matrix: model families x methods x artifacts, each cell tested, none assumed.

For every model family (tiny random configs: BERT/MiniLM, RoBERTa, DistilBERT, a Llama-style decoder) and
every registered method, one test: prepare the method, train a few steps on a learnable batch (the cell passes
only when the loss on that batch, measured in eval mode before and after, fell), then

- save/load: ``Method.save`` + the integrity gate (reload the run as ``tuneforge predict`` does; logits
  within 1e-4 of the in-memory model's on a probe batch),
- merge: for mergeable methods the reloaded merged plain model equals the unmerged in-memory model
  (the same gate, since ``model/`` is then the merged model),
- ONNX: this method's saved plain model exported with tuneforge's exporter, run in ONNX Runtime, logits within
  1e-3 (every method its own export: no cell stands for another's),
- INT8: tuneforge's INT8 quantization (per-channel, head kept fp32) of that export: finite, >= 90% prediction
  agreement, no collapse.

A cell is ``pass``, ``fail`` (with the error), ``unsupported`` (tuneforge answers "not supported yet", with
its reason), ``refused`` (tuneforge refuses the combination with another reason: a check of its own said no)
or ``n/a``. A test fails on any ``fail`` cell. With ``TUNEFORGE_MATRIX_JSON``
set, results are also written there; ``scripts/support_matrix.py`` renders them as docs/support-matrix.md.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FILLER, NEGATIVE, POSITIVE, synthetic_rows
from tuneforge.base.errors import UserError
from tuneforge.core.methods import build_method, method_names, method_spec

FAMILIES = ("bert", "roberta", "distilbert", "llama")
FAMILY_LABELS = {"bert": "BERT / MiniLM", "roberta": "RoBERTa", "distilbert": "DistilBERT",
                 "llama": "Llama-style decoder"}
ARTIFACTS = ("train", "save/load", "merge", "onnx", "int8")
TRAIN_STEPS = 25
# Cells known to fail, with why: the page shows them as failures; the test is a strict xfail, so it turns
# red the day the cell starts passing (then delete the entry).
KNOWN_FAILURES = {
    ("roberta", "ia3"): "PEFT 0.21's merge_and_unload raises AttributeError on RoBERTa's classification head "
                        "(modules_to_save wrapper of RobertaClassificationHead) when merging IA3 (merge: true, the "
                        "default), after training",
}
# Method keys for a 32-wide model (the defaults assume real model widths).
SMALL_KEYS = {"adapter": {"bottleneck": 8}, "lora": {"r": 4}, "dora": {"r": 4}, "adalora": {"init_r": 4, "target_r": 2}}


def tiny_model_and_tokenizer(family: str):
    """A randomly initialised 2-layer, 32-wide sequence classifier of ``family`` and a word-level tokenizer."""
    from transformers import (AutoModelForSequenceClassification, BertConfig, BertTokenizer, DistilBertConfig,
                              LlamaConfig, RobertaConfig)

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    # Models without token types (all but BERT) must not be fed token_type_ids.
    names = ["input_ids", "token_type_ids", "attention_mask"] if family == "bert" else ["input_ids", "attention_mask"]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, model_input_names=names)
    common = dict(num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
                  pad_token_id=0)
    if family == "bert":
        config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, **common)
    elif family == "roberta":
        config = RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=72, type_vocab_size=1, **common)
    elif family == "distilbert":
        config = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=64, **common)
    else:
        config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, **common)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config), tokenizer


def batch_for(tokenizer, rows: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    encoded = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
    labels = torch.tensor([int(r["label"] == "positive") for r in rows])
    return dict(encoded), labels


def record(family: str, method: str, cells: dict[str, dict]) -> None:
    target = os.environ.get("TUNEFORGE_MATRIX_JSON")
    if not target:
        return
    path = Path(target)
    data = json.loads(path.read_text()) if path.is_file() and path.stat().st_size else {}
    data.setdefault("families", [[k, FAMILY_LABELS[k]] for k in FAMILIES])  # a list: keeps this order
    data.setdefault("artifacts", list(ARTIFACTS))
    data.setdefault("methods", method_names())
    data.setdefault("results", {}).setdefault(family, {})[method] = cells
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def outcome(function) -> tuple[dict, object]:
    """Run one artifact's check: pass, unsupported (tuneforge's "not supported yet"), refused (any other
    tuneforge UserError: a check said no) or fail (anything else)."""
    try:
        detail, value = function()
        return {"status": "pass", "detail": detail}, value
    except UserError as error:
        message = str(error).splitlines()[0]
        return {"status": "unsupported" if "not supported yet" in message else "refused", "detail": message}, None
    except Exception as error:  # noqa: BLE001 - the cell records the failure; the test then fails
        return {"status": "fail", "detail": f"{type(error).__name__}: {error}"[:300],
                "traceback": traceback.format_exc()[-2000:]}, None


def method_config(name: str):
    spec = method_spec(name)
    return spec.config_class(name=name, **SMALL_KEYS.get(name, {}))


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("family", FAMILIES)
def test_support_matrix_cell(family, method, tmp_path, request):
    from transformers import PreTrainedModel

    from tuneforge.base.integrity import gate_saved_run
    from tuneforge.core.engine.optim import build_optimizer
    from tuneforge.base.recipe import TrainConfig

    if (family, method) in KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[(family, method)]))
    torch.manual_seed(0)
    model, tokenizer = tiny_model_and_tokenizer(family)
    inputs, labels = batch_for(tokenizer, synthetic_rows(32, seed=3))
    probe_inputs, probe_labels = batch_for(tokenizer, synthetic_rows(32, seed=4))
    cells: dict[str, dict] = {}
    state: dict = {}

    def train():
        method_ = build_method(method_config(method))
        prepared = method_.prepare(model)
        optimizer = build_optimizer(prepared, method_.optimizer_parameters(prepared),
                                    TrainConfig(learning_rate=3e-3, weight_decay=0.0))
        method_.on_epoch_start(prepared, 0)

        def batch_loss() -> float:  # eval mode: no dropout, so before and after are comparable
            prepared.eval()
            with torch.no_grad():
                return float(torch.nn.functional.cross_entropy(prepared(**inputs).logits.float(), labels))

        before = batch_loss()
        for step in range(TRAIN_STEPS):
            prepared.train()
            loss = torch.nn.functional.cross_entropy(prepared(**inputs).logits, labels)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss {float(loss)} at step {step + 1}")
            loss.backward()
            optimizer.step()
            method_.on_optimizer_step(prepared, step + 1, TRAIN_STEPS)
            optimizer.zero_grad(set_to_none=True)
        after = batch_loss()
        if not after < before:
            raise RuntimeError(f"the loss did not fall: {before:.4f} -> {after:.4f} in {TRAIN_STEPS} steps")
        state.update(method=method_, model=prepared)
        return f"loss {before:.3f} -> {after:.3f} in {TRAIN_STEPS} steps", None

    cells["train"], _ = outcome(train)
    if cells["train"]["status"] != "pass":
        for artifact in ARTIFACTS[1:]:
            cells[artifact] = {"status": "n/a", "detail": f"method does not train on this family ({cells['train']['status']})"}
        record(family, method, cells)
        assert cells["train"]["status"] != "fail", cells["train"]
        return

    def save_load():
        method_, prepared = state["method"], state["model"]
        with torch.no_grad():
            before = prepared(**probe_inputs).logits.float()
        counts = {"trainable": sum(p.numel() for p in prepared.parameters() if p.requires_grad),
                  "total": sum(p.numel() for p in prepared.parameters())}
        saved = method_.save(prepared, tmp_path)
        entry = gate_saved_run(method_, prepared, saved, counts, tmp_path, probe_inputs, probe_labels.numpy(), before)
        state["saved"] = saved
        return f"reloaded max |Δlogit| {entry['probe']['max_abs_logit_diff']:.1e}", None

    cells["save/load"], _ = outcome(save_load)
    mergeable = bool(getattr(method_spec(method), "mergeable", False))
    plain = isinstance(state.get("saved"), PreTrainedModel) and (tmp_path / "model" / "config.json").is_file()
    if cells["save/load"]["status"] != "pass":
        cells["merge"] = {"status": "n/a", "detail": "save/load did not pass"}
    elif mergeable:
        cells["merge"] = {"status": "pass", "detail": "merged model/ reloaded equals the unmerged model "
                                                      f"({cells['save/load']['detail'].split(' ', 1)[1]})"}
    elif plain:
        cells["merge"] = {"status": "n/a", "detail": "no adapter: model/ is the trained model itself"}
    else:
        cells["merge"] = {"status": "unsupported", "detail": "not linear in the weights: the run keeps base/ + adapter/"}

    def onnx():
        from tuneforge.apps.export.onnx import export_onnx
        from tuneforge.apps.export.runtime import OnnxBackend

        if not plain:  # what `tuneforge export` answers for such a run (apps/export/pipeline.py)
            raise UserError(f"export: runs whose method keeps base model + adapter (method '{method}') are not "
                            "supported yet")
        from tuneforge.apps.export.runtime import model_input_names

        saved = state["saved"].float().eval()
        names = model_input_names(tokenizer, saved)
        example = {k: v.numpy() for k, v in probe_inputs.items() if k in names}
        path = tmp_path / "model.onnx"
        export_onnx(saved, example, names, path)
        with torch.no_grad():
            reference = saved(**probe_inputs).logits.float().numpy()
        exported = OnnxBackend(path, "onnx").logits(example)
        difference = float(np.abs(reference - exported).max())
        if not difference <= 1e-3:
            raise RuntimeError(f"ONNX Runtime logits differ by {difference:.3g} (> 1e-3)")
        state.update(onnx=path, reference=reference, example=example, plain_model=saved)
        return f"ONNX Runtime max |Δlogit| {difference:.1e}", None

    if cells["save/load"]["status"] == "pass":
        cells["onnx"], _ = outcome(onnx)
    else:
        cells["onnx"] = {"status": "n/a", "detail": "save/load did not pass"}

    def int8():
        from tuneforge.apps.export.quantize import kept_weights, plan_quantization, quantize_onnx
        from tuneforge.apps.export.runtime import OnnxBackend
        from tuneforge.base.integrity import compare_predictions

        path = tmp_path / "model-int8.onnx"
        saved = state["plain_model"]
        plan = plan_quantization(saved, [{name: torch.from_numpy(value) for name, value in state["example"].items()}])
        quantize_onnx(state["onnx"], path, kept_weights(saved, plan))
        quantized = OnnxBackend(path, "onnx int8").logits(state["example"])
        result = compare_predictions(state["reference"], quantized, None, None, 1.0)
        if not result["passed"] or result["agreement"] < 0.9:
            raise RuntimeError(f"INT8: agreement {result['agreement']:.0%}; {'; '.join(result['problems'])}")
        return (f"agreement {result['agreement']:.0%}, max |Δlogit| {result['max_abs_logit_diff']:.2f}; "
                f"fp32: {', '.join(plan.kept)}"), None

    cells["int8"], _ = (outcome(int8) if cells["onnx"]["status"] == "pass" else
                        ({"status": "n/a", "detail": f"quantizes this method's ONNX export, which is "
                                                     f"{cells['onnx']['status']} here"}, None))
    if (family, method) in KNOWN_FAILURES:
        for cell in cells.values():
            if cell["status"] == "fail":
                cell["known"] = KNOWN_FAILURES[(family, method)]
    record(family, method, cells)
    failed = {artifact: cell for artifact, cell in cells.items() if cell["status"] == "fail"}
    assert not failed, json.dumps(failed, indent=1)
