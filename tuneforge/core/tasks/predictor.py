"""Inference from a finished run folder: the Predictor behind ``tuneforge predict`` and ``tuneforge eval``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from tuneforge.core.recipe import load_run_recipe
from tuneforge.core.data.batching import EncodedSplit
from tuneforge.base.errors import UserError
from tuneforge.core.evaluate.calibration import read_temperature
from tuneforge.core.evaluate.inference import predict_probabilities
from tuneforge.core.evaluate.onnx_backend import load_run_onnx
from tuneforge.core.methods import method_spec
from tuneforge.base.runfolder import refuse_pickle_weights
from tuneforge.base.tables import refuse_lone_surrogates


class Predictor:
    """Loads a run's trained model and predicts label probabilities.

    ``run_dir/model`` is a plain transformers model for mergeable methods; for the others the run's method
    rebuilds base + adapter (:meth:`tuneforge.core.methods.Method.load`, chosen from the run's config.yaml).
    ``backend="onnx"``: the run's ONNX export instead (``RUN/export/onnx``, else ``onnx-int8``), through the
    same batching code; the PyTorch weights are not loaded then.
    """

    BACKENDS = ("torch", "onnx")

    def __init__(self, run_dir: str | Path, batch_size: int = 64, backend: str = "torch") -> None:
        from transformers import AutoTokenizer

        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise UserError(f"{self.run_dir}: run folder not found")
        self.recipe = load_run_recipe(self.run_dir)
        model_dir = self.run_dir / "model"
        if not model_dir.is_dir():
            raise UserError(f"{self.run_dir}: has no trained model (model/ is missing; did the run finish? "
                            "see run.json)")

        for folder in (model_dir, self.run_dir / "adapter"):  # pickled weights can run code when loaded
            refuse_pickle_weights(folder, allow_pickle=os.environ.get("TUNEFORGE_ALLOW_PICKLE") == "1")
        self.label_names: list[str] = json.loads((self.run_dir / "labels.json").read_text(encoding="utf-8"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if backend not in self.BACKENDS:
            raise UserError(f"--backend {backend}: unknown; choose one of {', '.join(self.BACKENDS)}")
        self.backend = backend
        self.model = (load_run_onnx(self.run_dir) if backend == "onnx"
                      else method_spec(self.recipe.method.name).load(self.run_dir, self.recipe.method)).eval()
        self.device = torch.device("cpu")
        self.batch_size = batch_size
        # calibration.json (train.calibrate): confidences are softmax(logits / T); a run without one: T = 1
        self.temperature = read_temperature(self.run_dir) or 1.0

    @property
    def is_pair_task(self) -> bool:
        return self.recipe.data.text_pair_column is not None

    def probabilities(self, texts: list[str], text_pairs: list[str] | None = None) -> np.ndarray:
        """Softmax probabilities, one row per text, columns in ``label_names`` order (batches sorted by length,
        computed under ``torch.inference_mode``: no autograd bookkeeping at all); calibrated: softmax of
        ``logits / T`` with the run's temperature when it has one."""
        refuse_lone_surrogates([*texts, *(text_pairs or [])], "predict")
        encoded = self.tokenizer(texts, text_pairs, truncation=True, max_length=self.recipe.data.max_length,
                                 padding=False, return_attention_mask=False)
        split = EncodedSplit(input_ids=encoded["input_ids"], token_type_ids=encoded.get("token_type_ids"),
                             labels=[0] * len(texts))
        with torch.inference_mode():
            probabilities, _ = predict_probabilities(self.model, split, self.batch_size, self.tokenizer.pad_token_id,
                                                     self.device, temperature=self.temperature)
        return probabilities
