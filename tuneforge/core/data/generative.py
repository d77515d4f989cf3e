"""Data of the generative tasks: reading, prompt templates, prompt masking, packing and batches.

``task: sft``: each row becomes a conversation (alpaca ``instruction``/``input``/``output`` columns or a
``messages`` column of ``{role, content}`` lists), rendered with the tokenizer's chat template. Labels are the
input ids on the assistant's tokens and ``-100`` everywhere else (the prompt, the template's markup around
it, and padding), so the loss is on the response only. ``task: causal-lm``: raw text (TXT: paragraphs
separated by blank lines; a table: its ``text_column``) joined with EOS and cut into ``max_length`` blocks,
every token labelled. ``task: masked-lm``: texts truncated to ``max_length``; the collator masks 15%.

Packing (``generative.packing``) concatenates whole examples into rows of ``max_length`` tokens, gives each
example its own ``position_ids`` starting at 0 and passes a block-diagonal causal attention mask (4-D,
additive), so no example attends to another: tests/test_generative.py checks the packed logits equal the
unpacked ones. (transformers does not infer the boundaries from the position restarts with the sdpa or
eager attention; without the explicit mask the later examples would see the earlier ones.)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneforge.base.recipe import GenerativeConfig, Recipe
from tuneforge.base.errors import UserError
from tuneforge.base.tables import SOURCE_ROW, read_table

IGNORE_INDEX = -100
PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


# ----------------------------------------------------------------------------- reading rows


@dataclass
class GenerativeSplit:
    """The rows of one split: conversations (sft) or texts (causal-lm, masked-lm), with their file rows."""

    name: str
    conversations: list[list[dict[str, str]]] = field(default_factory=list)  # sft: the full chat, answer last
    texts: list[str] = field(default_factory=list)  # causal-lm / masked-lm
    source_rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.conversations) or len(self.texts)

    def subset(self, indices: list[int], name: str) -> "GenerativeSplit":
        return GenerativeSplit(name=name, conversations=[self.conversations[i] for i in indices if self.conversations],
                               texts=[self.texts[i] for i in indices if self.texts],
                               source_rows=[self.source_rows[i] for i in indices])


@dataclass
class GenerativeData:
    """train / validation / test splits and notes for the user (splits made, rows dropped)."""

    train: GenerativeSplit
    validation: GenerativeSplit
    test: GenerativeSplit | None
    notes: list[str] = field(default_factory=list)
    # A language model predicts tokens, not labels: the loop's label names are none.
    label_names: list[str] = field(default_factory=list)


def load_generative_data(recipe: Recipe) -> GenerativeData:
    """Read and check every split of a generative recipe (no model loaded)."""
    data, settings = recipe.data, recipe.generative
    notes: list[str] = []
    train = read_split(Path(data.train), recipe, "train")
    if data.validation is not None:
        validation = read_split(Path(data.validation), recipe, "validation")
    else:
        order = list(range(len(train)))
        random.Random(recipe.train.seed).shuffle(order)
        count = max(1, round(len(order) * data.validation_fraction))
        if len(order) - count < 1:
            raise UserError(f"{data.train}: {len(order)} row(s) is too few to split off a validation set; "
                            "add rows or give data.validation")
        validation = train.subset(sorted(order[:count]), "validation")
        train = train.subset(sorted(order[count:]), "train")
        notes.append(f"validation: {len(validation)} rows split off train at random "
                     f"(data.validation_fraction={data.validation_fraction}, seed {recipe.train.seed})")
    test = read_split(Path(data.test), recipe, "test") if data.test is not None else None
    if settings.packing and recipe.task == "masked-lm":
        raise UserError("generative.packing: not supported yet for task masked-lm (set it to false)")
    return GenerativeData(train=train, validation=validation, test=test, notes=notes)


def read_split(path: Path, recipe: Recipe, name: str) -> GenerativeSplit:
    """One file as conversations (sft) or texts; UserError naming the file, column and rows on bad input."""
    if recipe.task != "sft" and path.suffix.lower() in (".txt", ".md"):
        return _read_text_file(path, name)

    frame = read_table(path)
    rows = frame[SOURCE_ROW].tolist()
    if recipe.task == "sft":
        conversations = conversations_from_frame(frame, recipe.generative, path)
        return GenerativeSplit(name=name, conversations=conversations, source_rows=rows)
    column = recipe.data.text_column
    _require_columns(frame, [column], path, "data.text_column")
    texts = frame[column].astype(str).tolist()
    blank = [row for row, text in zip(rows, texts) if not text.strip()]
    if blank and recipe.data.on_empty == "error":
        raise UserError(f"{path}: empty text in column '{column}' at rows {', '.join(map(str, blank[:10]))}; "
                        "fix them or set data.on_empty: drop")
    keep = [i for i, text in enumerate(texts) if text.strip()]
    return GenerativeSplit(name=name, texts=[texts[i] for i in keep], source_rows=[rows[i] for i in keep])


def _read_text_file(path: Path, name: str) -> GenerativeSplit:
    """A plain text file: one document per paragraph (blocks separated by blank lines)."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    documents, rows, current, start = [], [], [], 1
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            documents.append("\n".join(current))
            rows.append(start)
            current = []
    if current:
        documents.append("\n".join(current))
        rows.append(start)
    if not documents:
        raise UserError(f"{path}: the file has no text")
    return GenerativeSplit(name=name, texts=documents, source_rows=rows)


def _require_columns(frame, columns: list[str], path: Path, key: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        present = ", ".join(c for c in frame.columns if c != SOURCE_ROW)
        raise UserError(f"{path}: no column '{missing[0]}' (set generative.{key} or data.text_column to one of: "
                        f"{present})" if key != "data.text_column" else
                        f"{path}: no column '{missing[0]}' (set data.text_column to one of: {present})")


def conversations_from_frame(frame, settings: GenerativeConfig, path: Path) -> list[list[dict[str, str]]]:
    """Rows as chat lists ending with the assistant's answer (the part trained on)."""
    rows = frame[SOURCE_ROW].tolist()
    conversations = []
    if settings.messages_column:
        _require_columns(frame, [settings.messages_column], path, "messages_column")
        for row, value in zip(rows, frame[settings.messages_column].tolist()):
            conversations.append(_checked_messages(value, path, row, settings))
        return conversations
    wanted = [settings.instruction_column, settings.output_column]
    keys = ["instruction_column", "output_column"]
    _require_columns(frame, wanted, path, keys[0] if wanted[0] not in frame.columns else keys[1])
    has_input = settings.input_column is not None and settings.input_column in frame.columns
    for index, row in enumerate(rows):
        instruction = cell_text(frame[settings.instruction_column].iloc[index])
        answer = cell_text(frame[settings.output_column].iloc[index])
        extra = cell_text(frame[settings.input_column].iloc[index]) if has_input else ""
        if not instruction or not answer:
            empty = settings.instruction_column if not instruction else settings.output_column
            raise UserError(f"{path}: row {row}: column '{empty}' is empty; every example needs an instruction "
                            "and an output")
        conversation = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
        user = f"{instruction}\n\n{extra}" if extra else instruction
        conversation += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        conversations.append(conversation)
    return conversations


def cell_text(value: Any) -> str:
    """A table cell as stripped text; missing cells (None, NaN: a key absent from some JSONL rows) are ''."""
    import pandas as pd

    if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)):
        return ""
    return str(value).strip()


def _checked_messages(value: Any, path: Path, row: int, settings: GenerativeConfig) -> list[dict[str, str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    where = f"{path}: row {row}: column '{settings.messages_column}'"
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: expected a non-empty list of {{role, content}} messages")
    messages = []
    for message in value:
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise UserError(f"{where}: every message needs 'role' and 'content' (got {str(message)[:80]})")
        if message["role"] not in ("system", "user", "assistant"):
            raise UserError(f"{where}: unknown role {message['role']!r}; use system, user or assistant")
        messages.append({"role": str(message["role"]), "content": str(message["content"])})
    if messages[-1]["role"] != "assistant":
        raise UserError(f"{where}: the last message must be the assistant's (the answer trained on)")
    if settings.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": settings.system_prompt})
    return messages


# ----------------------------------------------------------------------------- tokenizing


@dataclass
class EncodedExamples:
    """Token ids and labels of a split, one list per example (or per packed row / block)."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    position_ids: list[list[int]] | None = None  # packed rows: restarts at 0 where each example begins
    truncated: int = 0  # examples cut at max_length
    dropped: int = 0  # examples with no response token left after truncation
    examples: int = 0  # examples before packing
    # What turns rows of this split into a batch (the task's collator: padding, or masked-lm's masking).
    collator: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    @property
    def target_tokens(self) -> int:
        return sum(sum(1 for label in labels if label != IGNORE_INDEX) for labels in self.labels)


def uses_chat_template(tokenizer, settings: GenerativeConfig) -> bool:
    """Whether prompts are rendered with the tokenizer's chat template (UserError if asked for and missing)."""
    if not settings.chat_template:
        return False
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("generative.chat_template: the model's tokenizer has no chat template; set "
                        "generative.chat_template: false for a plain '### Instruction / ### Response' prompt")
    return True


def _template_ids(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def _plain_prompt(messages: list[dict[str, str]]) -> str:
    """The prompt text of the plain template (no chat template): system, then each turn."""
    parts = []
    for message in messages:
        if message["role"] == "system":
            parts.append(message["content"] + "\n\n")
        elif message["role"] == "user":
            parts.append(PLAIN_PROMPT.format(instruction=message["content"]))
        else:
            parts.append(message["content"] + "\n\n")
    return "".join(parts)


def prompt_ids(tokenizer, messages: list[dict[str, str]], settings: GenerativeConfig) -> list[int]:
    """Token ids of the prompt that asks for the next assistant turn (what generation starts from)."""
    if uses_chat_template(tokenizer, settings):
        return _template_ids(tokenizer, messages, generation_prompt=True)
    ids = tokenizer(_plain_prompt(messages), add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + list(ids)


def conversation_ids_and_labels(tokenizer, conversation: list[dict[str, str]],
                                settings: GenerativeConfig) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and labels that are -100 except on the assistants' tokens.

    Each assistant turn's tokens are found as the difference between the conversation rendered up to that
    turn with the generation prompt and rendered through it, so any chat template works; a template whose
    renderings are not prefixes of each other is refused rather than guessed at.
    """
    chat = uses_chat_template(tokenizer, settings)
    ids: list[int] = []
    labels: list[int] = []
    for turn, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        before = prompt_ids(tokenizer, conversation[:turn], settings)
        if chat:
            through = _template_ids(tokenizer, conversation[:turn + 1], generation_prompt=False)
        else:
            answer = tokenizer(message["content"], add_special_tokens=False)["input_ids"]
            through = before + list(answer) + [tokenizer.eos_token_id]
        if before[:len(ids)] != ids or through[:len(before)] != before:
            raise UserError("generative.chat_template: the model's chat template does not render a conversation "
                            "as a prefix of its continuation, so the answer tokens cannot be located; set "
                            "generative.chat_template: false")
        labels += [IGNORE_INDEX] * (len(before) - len(ids)) + through[len(before):]
        ids = through
    return ids, labels


def encode_sft(tokenizer, split: GenerativeSplit, settings: GenerativeConfig, max_length: int) -> EncodedExamples:
    """Conversations as (ids, labels), truncated to ``max_length``; examples left without an answer token dropped."""
    input_ids, labels, truncated, dropped = [], [], 0, 0
    for conversation in split.conversations:
        ids, target = conversation_ids_and_labels(tokenizer, conversation, settings)
        if len(ids) > max_length:
            truncated += 1
            ids, target = ids[:max_length], target[:max_length]
        if all(label == IGNORE_INDEX for label in target[1:]):  # position 0 is never predicted
            dropped += 1
            continue
        input_ids.append(ids)
        labels.append(target)
    return EncodedExamples(input_ids=input_ids, labels=labels, truncated=truncated, dropped=dropped,
                           examples=len(split.conversations))


def encode_causal_blocks(tokenizer, split: GenerativeSplit, max_length: int) -> EncodedExamples:
    """Raw texts joined with EOS and cut into blocks of ``max_length`` tokens (the last may be shorter)."""
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for text in split.texts:
        stream += list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
    blocks = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
    blocks = [block for block in blocks if len(block) > 1]
    return EncodedExamples(input_ids=blocks, labels=[list(block) for block in blocks], examples=len(split.texts))


def encode_masked(tokenizer, split: GenerativeSplit, max_length: int) -> EncodedExamples:
    """Texts tokenized with the model's special tokens, truncated to ``max_length`` (counted)."""
    input_ids, truncated = [], 0
    for text in split.texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if len(ids) > max_length:
            truncated += 1
            ids = ids[:max_length - 1] + [ids[-1]]  # keep the closing [SEP]
        input_ids.append(ids)
    return EncodedExamples(input_ids=input_ids, labels=[[] for _ in input_ids], truncated=truncated,
                           examples=len(split.texts))


def pack(encoded: EncodedExamples, max_length: int) -> EncodedExamples:
    """Whole examples concatenated into rows of at most ``max_length`` tokens (first fit, in order); each
    example's positions restart at 0, which is what marks the boundaries for the attention."""
    rows_ids: list[list[int]] = []
    rows_labels: list[list[int]] = []
    rows_positions: list[list[int]] = []
    for ids, labels in zip(encoded.input_ids, encoded.labels):
        if not rows_ids or len(rows_ids[-1]) + len(ids) > max_length:
            rows_ids.append([])
            rows_labels.append([])
            rows_positions.append([])
        rows_ids[-1] += ids
        # The first token of each example is not a target: the token before it belongs to another example.
        rows_labels[-1] += [IGNORE_INDEX] + labels[1:]
        rows_positions[-1] += list(range(len(ids)))
    return EncodedExamples(input_ids=rows_ids, labels=rows_labels, position_ids=rows_positions,
                           truncated=encoded.truncated, dropped=encoded.dropped, examples=encoded.examples)


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive (batch, 1, length, length) mask: 0 where a token may attend (same example, not later), the
    dtype's minimum elsewhere. Examples are the runs that start where ``position_ids`` is 0."""
    segments = torch.cumsum((position_ids == 0).long(), dim=1)
    same = segments[:, :, None] == segments[:, None, :]
    length = position_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    mask = torch.full(same.shape, torch.finfo(dtype).min, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(same & causal, 0.0)[:, None]


def collate(encoded: EncodedExamples, indices: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: padding gets attention 0 and label -100. Packed rows carry ``position_ids`` and a
    block-diagonal causal mask (:func:`block_causal_mask`); their padding forms an example of its own."""
    width = max(len(encoded.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    positions = torch.zeros((len(indices), width), dtype=torch.long) if encoded.position_ids else None
    for row, index in enumerate(indices):
        length = len(encoded.input_ids[index])
        ids[row, :length] = torch.tensor(encoded.input_ids[index])
        labels[row, :length] = torch.tensor(encoded.labels[index])
        mask[row, :length] = 1
        if positions is not None:
            positions[row, :length] = torch.tensor(encoded.position_ids[index])
            positions[row, length:] = torch.arange(width - length)
    if positions is not None:
        return {"input_ids": ids, "labels": labels, "position_ids": positions,
                "attention_mask": block_causal_mask(positions)}
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
