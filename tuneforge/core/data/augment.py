"""Rebalancing and augmentation of the train split (never validation or test).

Both run after the validation split, so no copy or variant of a validation row can reach training.

- :func:`balance_split`: ``data.balance`` oversample (draw extra rows of the smaller labels, with
  replacement, up to the largest label's count) or undersample (keep a random ``min count`` rows per label).
- :func:`eda_texts`: Easy Data Augmentation (Wei & Zou, 2019, "EDA: Easy Data Augmentation Techniques
  for Boosting Performance on Text Classification Tasks"): synonym replacement, random insertion of a
  synonym, random swap and random deletion, each changing about ``alpha`` x the words of a text.
  Synonyms come from :class:`EmbeddingSynonyms`: the nearest whole-word neighbours of a word in the
  input-embedding matrix of the recipe's own model, so EDA works offline with any model.
- :func:`back_translate`: text -> pivot language -> text with two local seq2seq models (e.g. the
  Marian ``opus-mt-en-de`` and ``opus-mt-de-en`` folders written by ``save_pretrained``).

Augmented rows keep the source row number of the row they were made from. For sentence-pair tasks only
the first text is augmented; the pair text is kept as it is.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable

import numpy as np

from tuneforge.base.recipe import AugmentConfig
from tuneforge.core.data.splits import Split
from tuneforge.base.errors import UserError
from tuneforge.base.models import resolve_model

# Words EDA never replaces with a synonym (Wei & Zou keep a stop-word list for the same reason):
# function words carry little meaning of their own, and their embedding neighbours are other function words.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves n't 's 're 've 'd 'll
""".split())

_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*$")


# ----------------------------------------------------------------------------- balance


def balance_split(split: Split, mode: str, seed: int, label_names: list[str]) -> tuple[Split, str | None]:
    """Return the rebalanced split and a note (None for ``mode == 'none'``)."""
    if mode == "none":
        return split, None
    rng = np.random.default_rng(seed)
    labels = np.asarray(split.labels)
    present = [k for k in range(len(label_names)) if (labels == k).any()]
    counts = {k: int((labels == k).sum()) for k in present}
    if mode == "oversample":
        target = max(counts.values())
        picks = list(range(len(split)))
        for k in present:
            members = np.flatnonzero(labels == k)
            if counts[k] < target:
                picks += rng.choice(members, size=target - counts[k], replace=True).tolist()
    elif mode == "undersample":
        target = min(counts.values())
        picks = sorted(int(i) for k in present
                       for i in rng.choice(np.flatnonzero(labels == k), size=target, replace=False))
    else:  # the config's Literal rules this out
        raise ValueError(f"unknown balance mode {mode!r}")
    balanced = split.subset(picks, split.name)
    note = (f"train: data.balance {mode}: {len(split)} -> {len(balanced)} rows, {target} per label "
            f"(was {min(counts.values())} to {max(counts.values())})")
    return balanced, note


# ----------------------------------------------------------------------------- EDA


class EmbeddingSynonyms:
    """Nearest whole-word neighbours in a model's input embeddings: an offline synonym source.

    Only vocabulary entries that decode to one alphabetic word of 2+ letters are candidates (so subword
    pieces and special tokens never come out), and only neighbours with cosine similarity >= ``min_similarity``.
    Neighbours of the input embeddings are words used in similar places: mostly synonyms, inflections and
    close relatives, sometimes antonyms (as with any distributional source); see docs/data.md.
    """

    def __init__(self, model: str, top_k: int = 8, min_similarity: float = 0.35) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        source = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        encoder = AutoModel.from_pretrained(source)
        weights = encoder.get_input_embeddings().weight.detach().float()
        del encoder
        self.lowercase = bool(getattr(self.tokenizer, "do_lower_case", False)) or \
            bool(self.tokenizer("A", add_special_tokens=False)["input_ids"] == self.tokenizer("a", add_special_tokens=False)["input_ids"])
        special = set(self.tokenizer.all_special_ids)
        count = min(weights.shape[0], len(self.tokenizer))
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(count)))
        # Word starts: SentencePiece marks them with "▁", byte-level BPE with "Ġ"; WordPiece marks the
        # continuations ("##") instead.
        marker = next((m for m in ("\u2581", "\u0120") if sum(str(t).startswith(m) for t in tokens) > count // 10), None)
        ids, words = [], []
        for token_id, token in enumerate(tokens):
            token = str(token)
            if token_id in special:
                continue
            if marker is not None:
                if not token.startswith(marker):
                    continue
                word = token[len(marker):]
            else:
                if token.startswith("##"):
                    continue
                word = token
            if len(word) >= 2 and word.isalpha() and word.isascii():
                ids.append(token_id)
                words.append(word)
        if not ids:
            raise UserError(f"model '{model}': its vocabulary has no whole words to use as synonyms; "
                            "use data.augment.ops without synonym/insert, or back_translation")
        self.words = words
        self.index = {word: i for i, word in enumerate(words)}
        matrix = weights[ids]
        self.matrix = torch.nn.functional.normalize(matrix, dim=1)
        self.top_k, self.min_similarity = top_k, min_similarity
        self._cache: dict[str, list[str]] = {}

    def __call__(self, word: str) -> list[str]:
        key = word.lower() if self.lowercase else word
        if key in self._cache:
            return self._cache[key]
        position = self.index.get(key)
        found: list[str] = []
        if position is not None and key.lower() not in STOP_WORDS:
            import torch

            scores = self.matrix @ self.matrix[position]
            values, order = torch.topk(scores, min(self.top_k * 3 + 1, len(self.words)))
            for value, i in zip(values.tolist(), order.tolist()):
                candidate = self.words[i]
                if (i == position or value < self.min_similarity or candidate.lower() in STOP_WORDS
                        or candidate.lower() == key.lower()):
                    continue
                found.append(candidate)
                if len(found) == self.top_k:
                    break
        self._cache[key] = found
        return found


# Where Debian's package wordnet-base (WordNet 3.0) puts the database; $WNHOME/dict is WordNet's own convention.
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict", "/usr/share/wordnet/dict")


def find_wordnet(folder: str | Path | None) -> Path:
    """The folder holding WordNet's data.noun/verb/adj/adv files, or UserError saying how to get it."""
    import os

    if folder:
        candidates = [Path(folder)]
    else:
        candidates = [Path(d) for d in WORDNET_DIRS]
        if os.environ.get("WNHOME"):
            candidates.insert(0, Path(os.environ["WNHOME"]) / "dict")
    for candidate in candidates:
        if all((candidate / f"data.{pos}").is_file() for pos in ("noun", "verb", "adj", "adv")):
            return candidate
    where = str(folder) if folder else ", ".join(str(c) for c in candidates)
    raise UserError(f"data.augment.synonyms wordnet: no WordNet database (data.noun, data.verb, data.adj, data.adv) "
                    f"in {where}; install it offline with `apt-get install wordnet-base` (Debian/Ubuntu), set "
                    "data.augment.wordnet_dir to a WordNet 3.x dict folder, or use synonyms: embedding")


class WordNetSynonyms:
    """Synonyms from WordNet: the other single-word lemmas of every synset the word is in.

    This is the synonym source of the original EDA code (``wordnet.synsets(word)`` lemmas). The database
    files are read directly (their format is documented in WordNet's wndb(5)); no download is involved.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        root = find_wordnet(folder)
        self.groups: dict[str, set[str]] = {}
        for pos in ("noun", "verb", "adj", "adv"):
            with (root / f"data.{pos}").open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if line.startswith(" "):  # the licence header
                        continue
                    fields = line.split(" ", 4 + 2 * 255)
                    try:
                        count = int(fields[3], 16)
                    except (IndexError, ValueError):
                        continue
                    lemmas = {re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).lower() for i in range(count)}
                    lemmas = {w for w in lemmas if w.isalpha() and w.isascii()}
                    for lemma in lemmas:
                        self.groups.setdefault(lemma, set()).update(lemmas)
        if not self.groups:
            raise UserError(f"{root}: the WordNet data files hold no synsets; is this a WordNet dict folder?")

    def __call__(self, word: str) -> list[str]:
        key = word.lower()
        if key in STOP_WORDS:
            return []
        return sorted(self.groups.get(key, set()) - {key})


def synonym_source(config: AugmentConfig, model: str | None):
    """The synonym function that ``data.augment.synonyms`` names."""
    if config.synonyms == "wordnet":
        return WordNetSynonyms(config.wordnet_dir)
    if model is None:
        raise UserError("data.augment: EDA synonym/insert with synonyms: embedding need the recipe's model")
    return EmbeddingSynonyms(model)


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _replaceable(words: list[str], synonyms: Callable[[str], list[str]]) -> list[int]:
    return [i for i, w in enumerate(words) if _WORD.match(w) and w.lower() not in STOP_WORDS and synonyms(w)]


def synonym_replacement(words: list[str], n: int, rng: random.Random, synonyms) -> list[str]:
    words = list(words)
    positions = _replaceable(words, synonyms)
    rng.shuffle(positions)
    for i in positions[:n]:
        words[i] = _match_case(words[i], rng.choice(synonyms(words[i])))
    return words


def random_insertion(words: list[str], n: int, rng: random.Random, synonyms) -> list[str]:
    words = list(words)
    for _ in range(n):
        positions = _replaceable(words, synonyms)
        if not positions:
            break
        synonym = rng.choice(synonyms(words[rng.choice(positions)]))
        words.insert(rng.randint(0, len(words)), synonym.lower())
    return words


def random_swap(words: list[str], n: int, rng: random.Random, synonyms=None) -> list[str]:
    words = list(words)
    if len(words) < 2:
        return words
    for _ in range(n):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return words


def random_deletion(words: list[str], p: float, rng: random.Random, synonyms=None) -> list[str]:
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept or [rng.choice(words)]


def eda_text(text: str, op: str, alpha: float, rng: random.Random, synonyms) -> str:
    """One EDA variant of ``text`` by operation ``op``; may equal the input when nothing applies."""
    words = text.split()
    if not words:
        return text
    n = max(1, int(round(alpha * len(words))))
    if op == "synonym":
        out = synonym_replacement(words, n, rng, synonyms)
    elif op == "insert":
        out = random_insertion(words, n, rng, synonyms)
    elif op == "swap":
        out = random_swap(words, n, rng)
    elif op == "delete":
        out = random_deletion(words, alpha, rng)
    else:
        raise ValueError(f"unknown EDA operation {op!r}")
    return " ".join(out)


def eda_texts(texts: list[str], config: AugmentConfig, seed: int, synonyms) -> list[list[str]]:
    """For each text, up to ``n_per_example`` distinct EDA variants (different from the text)."""
    rng = random.Random(seed)
    result = []
    for text in texts:
        variants: list[str] = []
        seen = {text}
        for _ in range(config.n_per_example * 4):  # a few retries: some ops can't change short texts
            if len(variants) == config.n_per_example:
                break
            variant = eda_text(text, rng.choice(config.ops), config.alpha, rng, synonyms)
            if variant.strip() and variant not in seen:
                seen.add(variant)
                variants.append(variant)
        result.append(variants)
    return result


# ----------------------------------------------------------------------------- back-translation


def _load_translator(folder: Path, which: str):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise UserError(f"data.augment.{which}: {folder} is not a model folder (no config.json); give a local "
                        "translation model saved with save_pretrained, e.g. Helsinki-NLP/opus-mt-en-de")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(f"data.augment.{which}: cannot load {folder} as a translation model: "
                        f"{str(exc).splitlines()[0]}") from None
    model.eval()
    return tokenizer, model


def _translate(tokenizer, model, texts: list[str], batch_size: int, num_beams: int, sample: bool) -> list[str]:
    import torch

    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        inputs = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=256)
        limit = min(int(inputs["input_ids"].shape[1] * 2 + 10), 512)
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=limit, num_beams=num_beams,
                                       do_sample=sample, top_k=50 if sample else None)
        out += [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    return out


def back_translate(texts: list[str], config: AugmentConfig, seed: int) -> list[list[str]]:
    """For each text, up to ``n_per_example`` distinct round trips through the pivot language."""
    import torch

    if config.forward_model is None or config.backward_model is None:
        raise UserError("data.augment: method back_translation needs forward_model and backward_model "
                        "(local folders of two translation models: source -> pivot and pivot -> source)")
    forward = _load_translator(Path(config.forward_model), "forward_model")
    backward = _load_translator(Path(config.backward_model), "backward_model")
    variants: list[list[str]] = [[] for _ in texts]
    for round_index in range(config.n_per_example):
        torch.manual_seed(seed + round_index)
        pivot = _translate(*forward, texts, config.batch_size, config.num_beams, sample=config.num_beams == 1)
        back = _translate(*backward, pivot, config.batch_size, 1, sample=False)
        for i, text in enumerate(back):
            if text and text != texts[i] and text not in variants[i]:
                variants[i].append(text)
    return variants


# ----------------------------------------------------------------------------- the train split


def augment_split(split: Split, config: AugmentConfig, seed: int, model: str | None,
                  synonyms: Callable[[str], list[str]] | None = None) -> tuple[Split, str]:
    """The split plus its augmented rows (each keeping its source row and label), and a note."""
    if config.method == "eda":
        if synonyms is None and {"synonym", "insert"} & set(config.ops):
            synonyms = synonym_source(config, model)
        variants = eda_texts(split.texts, config, seed, synonyms or (lambda word: []))
        how = f"eda ({', '.join(config.ops)}; alpha {config.alpha}; {config.synonyms} synonyms)"
    else:
        variants = back_translate(split.texts, config, seed)
        how = f"back_translation via {Path(config.forward_model).name} and {Path(config.backward_model).name}"
    texts, labels, rows = list(split.texts), list(split.labels), list(split.source_rows)
    pairs = list(split.text_pairs) if split.text_pairs is not None else None
    for i, new in enumerate(variants):
        for text in new:
            texts.append(text)
            labels.append(split.labels[i])
            rows.append(split.source_rows[i])
            if pairs is not None:
                pairs.append(split.text_pairs[i])
    augmented = Split(name=split.name, source=split.source, texts=texts, labels=labels, source_rows=rows,
                      text_pairs=pairs)
    added = len(augmented) - len(split)
    note = (f"train: data.augment {how}: +{added} rows ({len(split)} -> {len(augmented)}; "
            f"{config.n_per_example} per example asked, seed {seed})")
    return augmented, note


def prepare_train_split(train: Split, data_config, seed: int, label_names: list[str],
                        model: str | None) -> tuple[Split, list[str]]:
    """Apply ``data.balance`` then ``data.augment`` to the train split; return it and the notes."""
    notes: list[str] = []
    train, note = balance_split(train, data_config.balance, seed, label_names)
    if note:
        notes.append(note)
    if data_config.augment is not None:
        augment_seed = data_config.augment.seed if data_config.augment.seed is not None else seed
        train, note = augment_split(train, data_config.augment, augment_seed, model)
        notes.append(note)
    return train, notes
