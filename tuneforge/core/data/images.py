"""Reading image-classification data: an ImageFolder (``root/<label>/<image>``) or a CSV/TSV/JSON/JSONL/Parquet
file with an image-path column (``data.image_column``; relative paths are relative to the file's folder).

Every image is opened and decoded once up front, so a corrupt or missing file fails the run before any model
loads, with the paths listed (``data.on_bad_image: error``), or is left out and listed in a note (``skip``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.base.recipe import DataConfig
from tuneforge.core.data.splits import stratified_split
from tuneforge.core.data.splits import sorted_labels
from tuneforge.core.data.splits import format_rows
from tuneforge.core.data.splits import label_name
from tuneforge.core.data.splits import ClassificationData
from tuneforge.base.errors import UserError
from tuneforge.base.tables import SOURCE_ROW, read_table

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
BAD_SHOWN = 10


@dataclass
class ImageSplit:
    """One split of images: file paths, label ids and where each row came from (a file row, or the position in
    the sorted folder listing). ``texts`` are the paths, so evaluation tables show them."""

    name: str
    source: Path
    paths: list[Path]
    labels: list[int]
    source_rows: list[int]
    notes: list[str] = field(default_factory=list)
    text_pairs: None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def texts(self) -> list[str]:
        return [str(p) for p in self.paths]

    def subset(self, indices, name: str) -> "ImageSplit":
        pick = [int(i) for i in indices]
        return ImageSplit(name=name, source=self.source, paths=[self.paths[i] for i in pick],
                          labels=[self.labels[i] for i in pick], source_rows=[self.source_rows[i] for i in pick])


def open_rgb(path: Path):
    """The image at ``path`` decoded as RGB (PIL)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def bad_images(paths: list[Path]) -> list[tuple[Path, str]]:
    """(path, reason) of every file that cannot be opened and decoded as an image."""
    found = []
    for path in paths:
        try:
            open_rgb(path)
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; each is 'unreadable' here
            found.append((path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"))
    return found


def list_image_folder(root: Path) -> tuple[list[Path], list[str]]:
    """(image paths, label names of their sub-folders) of an ImageFolder, sorted."""
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(path)
                labels.append(folder.name)
    return paths, labels


def list_image_table(path: Path, config: DataConfig, with_labels: bool = True) -> tuple[list[Path], list[str], list[int]]:
    """(image paths, labels, source rows) of a data file with an image-path column."""
    frame = read_table(path)
    wanted = [("image_column", config.image_column)] + ([("label_column", config.label_column)] if with_labels else [])
    for key, column in wanted:
        if column not in frame.columns:
            present = ", ".join(str(c) for c in frame.columns if c != SOURCE_ROW)
            raise UserError(f"{path}: no column '{column}' (data.{key}); the file has columns: {present}. "
                            f"Set data.{key} to one of them")
    paths = [Path(str(value)).expanduser() for value in frame[config.image_column].tolist()]
    paths = [p if p.is_absolute() else (path.parent / p) for p in paths]
    labels = [label_name(v) for v in frame[config.label_column].tolist()] if with_labels else [""] * len(paths)
    return paths, labels, frame[SOURCE_ROW].astype(int).tolist()


def read_image_split(path: Path, config: DataConfig, name: str, label_names: list[str] | None
                     ) -> tuple[ImageSplit, list[str], list[str]]:
    """(split, label names, notes); ``label_names`` None: taken from this (train) split."""
    if not path.exists():
        raise UserError(f"{path}: not found (data.{name}: an ImageFolder root or a file with an image-path column)")
    if path.is_dir():
        paths, labels = list_image_folder(path)
        rows = list(range(1, len(paths) + 1))
        if not paths:
            raise UserError(f"{path}: no images found; an ImageFolder holds one sub-folder per label with image files "
                            f"({', '.join(IMAGE_EXTENSIONS)}) inside")
    else:
        paths, labels, rows = list_image_table(path, config)
    notes: list[str] = []
    bad = bad_images(paths)
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:BAD_SHOWN])
        more = f"; and {len(bad) - BAD_SHOWN} more" if len(bad) > BAD_SHOWN else ""
        if config.on_bad_image == "error":
            raise UserError(f"{path}: {len(bad)} image(s) cannot be read: {shown}{more}. Fix or remove them, or set "
                            "data.on_bad_image: skip")
        skipped = {p for p, _ in bad}
        keep = [i for i, p in enumerate(paths) if p not in skipped]
        paths, labels, rows = [paths[i] for i in keep], [labels[i] for i in keep], [rows[i] for i in keep]
        notes.append(f"{name}: skipped {len(bad)} unreadable image(s) (data.on_bad_image: skip): {shown}{more}")
        if not paths:
            raise UserError(f"{path}: every image is unreadable")
    if label_names is None:
        label_names = sorted_labels(sorted(set(labels)))
        if len(label_names) < 2:
            raise UserError(f"{path}: only one label ({label_names[0]!r}); classification needs at least two")
    index = {label: i for i, label in enumerate(label_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        rows_unknown = [r for r, label in zip(rows, labels) if label not in index]
        raise UserError(f"{path}: label(s) {', '.join(repr(u) for u in unknown[:10])} do not occur in the train set "
                        f"(rows {format_rows(rows_unknown)}); add examples of them to train or remove them")
    split = ImageSplit(name=name, source=path, paths=paths, labels=[index[label] for label in labels],
                       source_rows=rows)
    return split, label_names, notes


def load_image_data(config: DataConfig, seed: int) -> ClassificationData:
    """Read and check every split of an image-classification job; validation is a stratified share of train
    when ``data.validation`` is not given."""
    if config.balance != "none" or config.augment is not None:
        raise UserError("data.balance and data.augment are text options; for images use the image section "
                        "(random_resized_crop, horizontal_flip, mixup, cutmix)")
    train, label_names, notes = read_image_split(config.train, config, "train", None)
    if config.validation is not None:
        validation, _, more = read_image_split(config.validation, config, "validation", label_names)
        notes += more
    else:
        train, validation = stratified_split(train, config.validation_fraction, seed, label_names)
        notes.append(f"validation: stratified {config.validation_fraction:.0%} of {config.train.name} "
                     f"({len(validation)} images, seed {seed})")
    test = None
    if config.test is not None:
        test, _, more = read_image_split(config.test, config, "test", label_names)
        notes += more
    return ClassificationData(label_names=label_names, train=train, validation=validation, test=test, notes=notes)

