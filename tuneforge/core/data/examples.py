"""From data files to checked classification splits with label names kept end to end (``task: classification``).

Every check here runs before any model is loaded, so that a bad file fails in seconds with a
message naming the file, the rows and the fix.
"""

from __future__ import annotations

from tuneforge.base.errors import UserError
from tuneforge.base.recipe import DataConfig
from tuneforge.core.data.augment import prepare_train_split
from tuneforge.core.data.splits import (ClassificationData, label_name, read_split, sorted_labels, stratified_split,
                                        to_split)


def load_classification_data(config: DataConfig, seed: int, model: str | None = None) -> ClassificationData:
    """Read, check and split the recipe's data; raise UserError on the first problem.

    ``data.balance`` and ``data.augment`` then change the train split only (after the validation split);
    ``model`` (the recipe's model) is the synonym source of EDA's synonym operations."""
    train_frame, notes = read_split(config.train, config, "train")
    label_names = sorted_labels(sorted({label_name(v) for v in train_frame[config.label_column].tolist()}))
    if len(label_names) < 2:
        raise UserError(f"{config.train}: only one label ({label_names[0]!r}) in column '{config.label_column}'; "
                        "classification needs at least two")
    label_ids = {name: i for i, name in enumerate(label_names)}
    train = to_split(train_frame, config.train, config, "train", label_ids)

    if config.validation is not None:
        frame, more = read_split(config.validation, config, "validation")
        notes += more
        validation = to_split(frame, config.validation, config, "validation", label_ids)
    else:
        train, validation = stratified_split(train, config.validation_fraction, seed, label_names)
        notes.append(f"validation: stratified {config.validation_fraction:.0%} of {config.train.name} "
                     f"({len(validation)} rows, seed {seed})")
    if config.balance != "none" or config.augment is not None:
        train, more = prepare_train_split(train, config, seed, label_names, model)
        notes += more

    test = None
    if config.test is not None:
        frame, more = read_split(config.test, config, "test")
        notes += more
        test = to_split(frame, config.test, config, "test", label_ids)
    return ClassificationData(label_names=label_names, train=train, validation=validation, test=test, notes=notes)


