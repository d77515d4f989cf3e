"""``tuneforge data noise``: rows whose label is probably wrong, found with out-of-fold predictions.

How (confident learning, Northcutt et al. 2021, through the ``cleanlab`` library):

1. The recipe's model with its body frozen (as method ``freeze`` trains it) embeds every row of
   ``data.train`` once: one ``torch.no_grad`` forward pass, mean-pooled over the tokens.
2. k-fold (stratified, ``--folds``): a logistic-regression head (scikit-learn) is fitted on k-1 folds
   and predicts the held-out fold, so every row gets probabilities from a model that never saw it.
   Fitting k heads on fixed features takes seconds; the forward pass is the only slow part.
3. ``cleanlab.filter.find_label_issues`` flags rows whose given label's out-of-fold probability is
   below that label's own confidence threshold while another label's is above its threshold, and
   ranks them by self-confidence (the probability of the given label, lowest first).

The CSV lists each flagged row with its original row number, text, given label, suggested label
(the most probable other label) and both probabilities. Nothing is changed in the data: a person
decides; ``tuneforge data clean`` and an editor do the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tuneforge.base.errors import UserError
from tuneforge.base.models import load_tokenizer, resolve_model
from tuneforge.base.quiet import quiet_transformers
from tuneforge.core.data.splits import label_name, read_split, sorted_labels, to_split


@dataclass
class NoiseResult:
    issues: pd.DataFrame
    rows: int
    folds: int
    out_of_fold_accuracy: float
    seconds_features: float
    seconds_folds: float


@dataclass
class LabelledRows:
    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray
    source_rows: list[int]
    label_names: list[str]


def read_recipe_rows(recipe) -> LabelledRows:
    """Every row of the recipe's ``data.train`` file (before any split), checked as training checks it."""
    config = recipe.data
    frame, _ = read_split(config.train, config, "train")
    names = sorted_labels(sorted({label_name(v) for v in frame[config.label_column].tolist()}))
    if len(names) < 2:
        raise UserError(f"{config.train}: only one label; the noise finder needs at least two")
    split = to_split(frame, config.train, config, "train", {n: i for i, n in enumerate(names)})
    return LabelledRows(split.texts, split.text_pairs, np.asarray(split.labels), split.source_rows, names)


def pooled_features(model: str, texts: list[str], pairs: list[str] | None, max_length: int,
                    batch_size: int = 64, log=None) -> np.ndarray:
    """Mean-pooled last hidden states of the frozen model for every text (one no-grad pass)."""
    import time

    import torch
    from transformers import AutoModel

    source = resolve_model(model)
    tokenizer = load_tokenizer(source)
    with quiet_transformers():  # the body is loaded without its pretraining heads: expected
        encoder = AutoModel.from_pretrained(source)
    encoder.eval()
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False)
    ids = encoded["input_ids"]
    types = encoded.get("token_type_ids")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    features: np.ndarray | None = None
    started = time.perf_counter()
    with torch.no_grad():
        for done, start in enumerate(range(0, len(order), batch_size)):
            chunk = order[start:start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            token_types = torch.zeros((len(chunk), width), dtype=torch.long) if types else None
            for row, i in enumerate(chunk):
                input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                mask[row, :len(ids[i])] = 1
                if token_types is not None:
                    token_types[row, :len(ids[i])] = torch.tensor(types[i])
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            if token_types is not None:
                inputs["token_type_ids"] = token_types
            hidden = encoder(**inputs).last_hidden_state.float()
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            if features is None:
                features = np.zeros((len(ids), pooled.shape[1]), dtype=np.float32)
            features[chunk] = pooled.numpy()
            if log and done and done % 20 == 0:
                log(f"  embedded {min(start + batch_size, len(order)):,}/{len(order):,} rows "
                    f"({time.perf_counter() - started:.0f}s)")
    assert features is not None
    return features


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int, seed: int,
                              n_classes: int, c: float = 1.0) -> np.ndarray:
    """k-fold probabilities from a standardised logistic-regression head fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probabilities = np.zeros((len(labels), n_classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_idx, held_idx in splitter.split(features, labels):
        head = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        head.fit(features[train_idx], labels[train_idx])
        classes = head.classes_
        probabilities[np.ix_(held_idx, classes)] = head.predict_proba(features[held_idx])
    return probabilities


def rank_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Indices of likely label errors, most likely first (cleanlab's confident learning)."""
    from cleanlab.filter import find_label_issues

    return np.asarray(find_label_issues(labels=labels, pred_probs=probabilities, filter_by="prune_by_noise_rate",
                                        return_indices_ranked_by="self_confidence", n_jobs=1), dtype=np.int64)


def find_noise(recipe, folds: int = 5, log=None, features: np.ndarray | None = None) -> NoiseResult:
    """The ranked table of likely label errors in the recipe's training file."""
    import time

    if folds < 2:
        raise UserError(f"--folds {folds}: use 2 or more")
    rows = read_recipe_rows(recipe)
    counts = np.bincount(rows.labels, minlength=len(rows.label_names))
    too_few = [rows.label_names[i] for i, count in enumerate(counts) if count < folds]
    if too_few:
        raise UserError(f"{recipe.data.train}: label(s) {', '.join(map(repr, too_few[:10]))} have fewer rows than "
                        f"--folds {folds}; lower --folds or add rows")
    started = time.perf_counter()
    if features is None:
        if log:
            log(f"embedding {len(rows.texts):,} rows with the frozen {recipe.model} (one forward pass) ...")
        features = pooled_features(recipe.model, rows.texts, rows.pairs, recipe.data.max_length, log=log)
    seconds_features = time.perf_counter() - started
    started = time.perf_counter()
    probabilities = out_of_fold_probabilities(features, rows.labels, folds, recipe.train.seed, len(rows.label_names))
    issues = rank_label_issues(rows.labels, probabilities)
    seconds_folds = time.perf_counter() - started
    given = probabilities[np.arange(len(rows.labels)), rows.labels]
    others = probabilities.copy()
    others[np.arange(len(rows.labels)), rows.labels] = -1.0
    suggested = others.argmax(axis=1)
    table = pd.DataFrame({
        "rank": np.arange(1, len(issues) + 1),
        "row": [rows.source_rows[i] for i in issues],
        "text": [rows.texts[i] for i in issues],
        **({"text_pair": [rows.pairs[i] for i in issues]} if rows.pairs is not None else {}),
        "label": [rows.label_names[rows.labels[i]] for i in issues],
        "suggested_label": [rows.label_names[suggested[i]] for i in issues],
        "label_probability": np.round(given[issues], 6),
        "suggested_probability": np.round(others[issues, suggested[issues]], 6),
    })
    accuracy = float((probabilities.argmax(axis=1) == rows.labels).mean())
    return NoiseResult(issues=table, rows=len(rows.labels), folds=folds, out_of_fold_accuracy=accuracy,
                       seconds_features=seconds_features, seconds_folds=seconds_folds)
