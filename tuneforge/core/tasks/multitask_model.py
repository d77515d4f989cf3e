"""The model of ``task: multitask``: one shared encoder (any transformers ``AutoModel`` body) and one linear head per
task over a pooled text vector.

Saved as a folder that needs no recipe to load back (:func:`load_multitask_model`):

- the encoder as a plain transformers model (``config.json``, ``model.safetensors``; ``AutoModel.from_pretrained``
  reads it) and, written beside it by the loop, the tokenizer;
- ``heads.safetensors``: ``<task>.weight`` and ``<task>.bias`` of every head;
- ``multitask.json``: pooling, max_length and, per task, its name, head type, label names and columns.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput
from tuneforge.base.errors import UserError
from tuneforge.base.quiet import quiet_transformers

HEADS_FILE = "heads.safetensors"
SPEC_FILE = "multitask.json"
FORMAT = "tuneforge-multitask"


@dataclass
class HeadSpec:
    """One head: the task it answers and how its labels are read."""

    name: str
    type: Literal["single_label", "multi_label"]
    labels: list[str]
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_delimiter: str | None = None
    weight: float = 1.0  # the task's loss weight in training
    metric: str = "accuracy"  # the task's headline validation metric

    @property
    def label_width(self) -> int:
        """Label columns of one example in a batch: a class id, or a multi-hot row."""
        return 1 if self.type == "single_label" else len(self.labels)


class TaskHead(nn.Module):
    """Dropout and a linear layer. Named ``classifier`` so that PEFT (LoRA) trains and saves it as it does the head
    of a sequence classifier (``modules_to_save``)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))


class MultiTaskModel(nn.Module):
    """``forward(input_ids, attention_mask, token_type_ids, task_index)`` returns ``.logits`` of each row's own head.

    The training loop's batches hold one task each; a batch that mixes tasks (the save check's probe rows) gets
    each row's logits zero-padded to the widest head. :meth:`all_logits` runs the encoder once for every head."""

    def __init__(self, encoder: nn.Module, heads: list[HeadSpec], pooling: str = "mean", max_length: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused (the heads read `pooling`); a trainable weight without gradient otherwise
        self.encoder = encoder
        self.config = encoder.config  # what PEFT and the integrity gate read (model_type, hidden size)
        self.head_specs = list(heads)
        self.pooling = pooling
        self.max_length = max_length
        self.dropout = dropout
        hidden = encoder.config.hidden_size
        # Keyed by position, not by name: a task called "embeddings" must not look like one to tuneforge.core.anatomy.
        self.heads = nn.ModuleDict({str(i): TaskHead(hidden, len(spec.labels), dropout)
                                    for i, spec in enumerate(self.head_specs)})

    @property
    def task_names(self) -> list[str]:
        return [spec.name for spec in self.head_specs]

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).unsqueeze(-1)
        mask = mask.to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, task_index: torch.Tensor | None = None,
                **ignored: Any) -> SequenceClassifierOutput:
        # **ignored: PEFT's sequence-classification wrapper passes labels=None, return_dict, ... along.
        if task_index is None:
            raise ValueError("MultiTaskModel needs task_index (which head answers each row); all_logits() runs all")
        pooled = self.pooled(input_ids, attention_mask, token_type_ids)
        tasks = sorted({int(t) for t in task_index.tolist()})
        if len(tasks) == 1:
            return SequenceClassifierOutput(logits=self.heads[str(tasks[0])](pooled))
        width = max(len(self.head_specs[t].labels) for t in tasks)
        logits = pooled.new_zeros((pooled.shape[0], width))
        for task in tasks:
            rows = task_index == task
            logits[rows, :len(self.head_specs[task].labels)] = self.heads[str(task)](pooled[rows]).to(logits.dtype)
        return SequenceClassifierOutput(logits=logits)

    def all_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every head's logits for the same rows, from one encoder pass."""
        pooled = self.pooled(input_ids, attention_mask, token_type_ids)
        return {spec.name: self.heads[str(i)](pooled) for i, spec in enumerate(self.head_specs)}

    # --- what the loop and the methods call on a transformers model ---------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.encoder.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.encoder.gradient_checkpointing_disable()

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write the encoder (plain transformers folder), ``heads.safetensors`` and ``multitask.json``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        self.encoder.save_pretrained(folder, safe_serialization=True)
        heads = {f"{spec.name}.{key}": value.detach().to("cpu").contiguous()
                 for i, spec in enumerate(self.head_specs)
                 for key, value in self.heads[str(i)].classifier.state_dict().items()}
        save_file(heads, str(folder / HEADS_FILE), metadata={"format": FORMAT})
        description = {"format": FORMAT, "version": 1, "pooling": self.pooling, "max_length": self.max_length,
                       "dropout": self.dropout, "tasks": [asdict(spec) for spec in self.head_specs]}
        (folder / SPEC_FILE).write_text(json.dumps(description, indent=1, ensure_ascii=False), encoding="utf-8")


def is_multitask_folder(folder: str | Path) -> bool:
    return (Path(folder) / SPEC_FILE).is_file()


def read_head_specs(folder: str | Path) -> tuple[dict[str, Any], list[HeadSpec]]:
    """``multitask.json`` of a saved model folder and its heads."""
    path = Path(folder) / SPEC_FILE
    description = json.loads(path.read_text(encoding="utf-8"))
    if description.get("format") != FORMAT:
        raise UserError(f"{path}: not a tuneforge multitask description (format {description.get('format')!r})")
    return description, [HeadSpec(**spec) for spec in description["tasks"]]


def load_multitask_model(folder: str | Path) -> MultiTaskModel:
    """The saved model of a multitask run, from its folder alone, in eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    folder = Path(folder)
    description, heads = read_head_specs(folder)
    with quiet_transformers():  # a BERT body was saved without its (unused) pooler: expected
        encoder = AutoModel.from_pretrained(folder)
    model = MultiTaskModel(encoder, heads, description["pooling"], description["max_length"], description["dropout"])
    weights = load_file(str(folder / HEADS_FILE))
    with torch.no_grad():
        for i, spec in enumerate(heads):
            model.heads[str(i)].classifier.load_state_dict(
                {key: weights[f"{spec.name}.{key}"] for key in ("weight", "bias")})
    return model.eval()
