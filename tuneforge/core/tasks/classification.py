"""``task: classification``: one label per text (or text pair); softmax and cross-entropy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tuneforge.base.recipe import Recipe
from tuneforge.core.tasks.base import Task


class ClassificationTask(Task):
    name = "classification"

    def load_data(self, recipe: Recipe):
        from tuneforge.core.data.examples import load_classification_data

        return load_classification_data(recipe.data, recipe.train.seed, model=recipe.model)

    def load_model(self, recipe: Recipe, label_names: list[str]):
        from tuneforge.core.engine.loop import load_classifier

        return load_classifier(recipe, label_names)

    def encode(self, preprocessor, split, recipe: Recipe, training: bool):
        from tuneforge.core.data.encode_cache import encode_split_cached

        return encode_split_cached(preprocessor, split, recipe.data.max_length)

    def loss_functions(self, recipe: Recipe, data, device: torch.device) -> tuple[nn.Module, nn.Module]:
        from tuneforge.core.engine.loop import class_weight_tensor

        weights = class_weight_tensor(recipe, data)
        # CrossEntropyLoss also takes class-probability targets (the mixed labels of MixUp/CutMix).
        return nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None), nn.CrossEntropyLoss()

    def validation_metrics(self, model, encoded, label_names, batch_size, pad_id, device, loss_fn, autocast_dtype,
                           before_batch=None) -> dict[str, Any]:
        from tuneforge.core.evaluate import classification_metrics
        from tuneforge.core.evaluate.inference import predict_probabilities

        probabilities, loss = predict_probabilities(model, encoded, batch_size, pad_id, device, loss_fn,
                                                    autocast_dtype, before_batch=before_batch)
        metrics = classification_metrics(np.array(encoded.labels), probabilities, label_names, per_class=False)
        metrics["loss"] = loss
        return metrics

    def after_training(self, recipe: Recipe, data, result, run_dir: Path, log) -> dict[str, Any]:
        if data.test is None:
            return {}
        from tuneforge.core.data.batching import encode_split
        from tuneforge.core.evaluate import write_evaluation
        from tuneforge.core.evaluate.inference import predict_probabilities

        encoded = encode_split(result.tokenizer, data.test, recipe.data.max_length)
        probabilities, _ = predict_probabilities(result.model, encoded, 64, result.tokenizer.pad_token_id,
                                                 result.runtime.device)
        return {"test": write_evaluation(run_dir / "eval" / "test", data.label_names, np.array(data.test.labels),
                                         probabilities, data.test.texts, data.test.text_pairs, data.test.source_rows)}
