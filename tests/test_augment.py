"""data.balance and data.augment: train split only, after the validation split; EDA and back-translation."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, synthetic_rows
from tuneforge.base.recipe import AugmentConfig
from tuneforge.core.recipe import load_recipe
from tuneforge.core.data.augment import (EmbeddingSynonyms, WordNetSynonyms, augment_split, balance_split, eda_text,
                                    eda_texts)
from tuneforge.core.data.examples import load_classification_data
from tuneforge.core.data.splits import Split
from tuneforge.base.errors import UserError

SYNONYMS = {"great": ["superb", "fine"], "film": ["movie"], "story": ["tale", "plot"]}


def fake_synonyms(word: str) -> list[str]:
    return SYNONYMS.get(word.lower(), [])


def make_split(labels: list[int]) -> Split:
    return Split(name="train", source=Path("x.jsonl"), texts=[f"text {i}" for i in range(len(labels))],
                 labels=labels, source_rows=list(range(2, len(labels) + 2)))


def test_balance_oversample_and_undersample():
    split = make_split([0] * 10 + [1] * 3 + [2] * 5)
    over, note = balance_split(split, "oversample", 0, ["a", "b", "c"])
    assert np.bincount(over.labels).tolist() == [10, 10, 10]
    assert over.texts[:18] == split.texts  # every original row kept, extras appended
    assert set(over.texts) == set(split.texts) and "18 -> 30" in note
    under, note = balance_split(split, "undersample", 0, ["a", "b", "c"])
    assert np.bincount(under.labels).tolist() == [3, 3, 3] and len(set(under.texts)) == 9
    assert balance_split(split, "none", 0, ["a", "b", "c"]) == (split, None)
    # seeded: the same seed, the same rows
    assert balance_split(split, "undersample", 0, ["a", "b", "c"])[0].texts == under.texts


def test_eda_operations():
    rng = random.Random(0)
    words = "the great film had a slow story".split()
    assert sorted(eda_text(" ".join(words), "swap", 0.3, rng, fake_synonyms).split()) == sorted(words)
    deleted = eda_text(" ".join(words), "delete", 0.3, rng, fake_synonyms).split()
    assert 1 <= len(deleted) <= len(words) and all(w in words for w in deleted)
    replaced = eda_text(" ".join(words), "synonym", 0.3, rng, fake_synonyms).split()
    assert len(replaced) == len(words) and replaced != words
    assert all(a == b or a in fake_synonyms(b) for a, b in zip(replaced, words))
    inserted = eda_text(" ".join(words), "insert", 0.3, rng, fake_synonyms).split()
    assert len(inserted) == len(words) + 2
    assert eda_text("Great film", "synonym", 0.5, random.Random(1), fake_synonyms).split()[0] in ("Superb", "Fine", "Great")


def test_eda_texts_are_distinct_seeded_and_skip_what_cannot_change():
    config = AugmentConfig(n_per_example=3, ops=["synonym", "swap", "delete"], alpha=0.2)
    texts = ["the great film had a slow story", "ok"]
    first = eda_texts(texts, config, 7, fake_synonyms)
    assert first == eda_texts(texts, config, 7, fake_synonyms)
    assert len(first[0]) == 3 and len(set(first[0])) == 3 and texts[0] not in first[0]
    assert first[1] == []  # one word, no synonym: nothing EDA can do


def test_embedding_synonyms_are_whole_words_of_the_model(tiny_model):
    synonyms = EmbeddingSynonyms(str(tiny_model), min_similarity=-1.0)
    found = synonyms("great")
    assert found and "great" not in found
    assert all(w.isalpha() and not w.startswith("[") for w in found)
    assert synonyms("the") == []  # stop words are never replaced
    assert synonyms("zebra") == []  # not in the vocabulary


def test_wordnet_synonyms_read_the_database_files(tmp_path):
    header = "  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"
    (tmp_path / "data.adj").write_text(header + "01123148 00 a 03 good 0 beneficial 0 well(p) 0 000 | desirable\n"
                                       "01129977 00 a 02 good 1 just 0 000 | morally admirable\n")
    (tmp_path / "data.noun").write_text(header + "06613686 10 n 03 movie 0 film 0 motion_picture 0 000 | a film\n")
    for pos in ("verb", "adv"):
        (tmp_path / f"data.{pos}").write_text(header)
    synonyms = WordNetSynonyms(tmp_path)
    assert synonyms("Good") == ["beneficial", "just", "well"]
    assert synonyms("film") == ["movie"]  # multi-word lemmas (motion_picture) are left out
    assert synonyms("the") == []
    with pytest.raises(UserError, match="wordnet-base"):
        WordNetSynonyms(tmp_path / "nowhere")


def _recipe(tmp_path: Path, tiny_model: Path, data_extra: str) -> Path:
    from conftest import write_jsonl

    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(100, seed=1))
    write_jsonl(tmp_path / "test.jsonl", synthetic_rows(20, seed=2))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: aug\nmodel: {tiny_model}\ndata:\n  train: train.jsonl\n  test: test.jsonl\n"
                      f"  max_length: 32\n{data_extra}method: full\n", encoding="utf-8")
    return recipe


def test_augment_changes_the_train_split_only_after_the_validation_split(tmp_path, tiny_model):
    recipe_path = _recipe(tmp_path, tiny_model, "  augment: {method: eda, ops: [swap, delete], n_per_example: 2}\n")
    recipe = load_recipe(recipe_path)
    plain = load_classification_data(recipe.data.model_copy(update={"augment": None}), 42)
    data = load_classification_data(recipe.data, 42, model=recipe.model)
    assert data.validation.texts == plain.validation.texts  # the same validation rows, untouched
    assert data.test.texts == plain.test.texts
    assert len(data.train) > len(plain.train) * 2.5  # about 2 new rows per row (short texts may give fewer)
    assert data.train.texts[:len(plain.train)] == plain.train.texts
    originals = dict(zip(plain.train.source_rows, plain.train.labels))
    for row, label in zip(data.train.source_rows, data.train.labels):
        assert originals[row] == label  # every new row keeps its source row and label
    assert not set(data.train.texts[len(plain.train):]) & set(data.validation.texts)
    assert any("data.augment eda" in note for note in data.notes)

    code, out, err = run_cli("validate", str(recipe_path), "--set", "data.balance=oversample")
    assert code == 0, err
    assert f"validation {len(plain.validation)}" in out and "data.balance oversample" in out


def test_augment_recipe_keys_are_checked(tmp_path, tiny_model):
    recipe_path = _recipe(tmp_path, tiny_model, "  augment: {method: eda, ops: [swap, shuffle]}\n  balance: up\n")
    code, _, err = run_cli("validate", str(recipe_path))
    assert code == 1
    assert "data.augment.ops.1" in err and "data.balance" in err
    recipe_path = _recipe(tmp_path, tiny_model, "  augment: {method: back_translation}\n")
    code, _, err = run_cli("validate", str(recipe_path))
    assert code == 1 and "forward_model and backward_model" in err
    recipe_path = _recipe(tmp_path, tiny_model, "  augment: {synonyms: wordnet, wordnet_dir: nowhere}\n")
    code, _, err = run_cli("validate", str(recipe_path))
    assert code == 1 and "no WordNet database" in err and str(tmp_path / "nowhere") in err


def make_tiny_marian(folder: Path, corpus: list[str], seed: int) -> Path:
    """A randomly initialised Marian translation model with a SentencePiece vocabulary trained on ``corpus``."""
    sentencepiece = pytest.importorskip("sentencepiece")
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True)
    (folder / "corpus.txt").write_text("\n".join(corpus), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "sp"),
                                             vocab_size=40, model_type="unigram", bos_id=-1, eos_id=-1, unk_id=0,
                                             pad_id=-1, minloglevel=2, hard_vocab_limit=False)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "sp.model"))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(processor.get_piece_size()):
        vocab.setdefault(processor.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    for name in ("source.spm", "target.spm"):
        shutil.copy(folder / "sp.model", folder / name)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = MarianTokenizer(source_spm=str(folder / "source.spm"), target_spm=str(folder / "target.spm"),
                                vocab=str(folder / "vocab.json"))
    torch.manual_seed(seed)
    config = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                          max_position_embeddings=64, pad_token_id=vocab["<pad>"], eos_token_id=0,
                          decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=0)
    MarianMTModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_back_translation_with_local_marian_models(tmp_path):
    corpus = [r["text"] for r in synthetic_rows(200, seed=3)]
    forward = make_tiny_marian(tmp_path / "en-xx", corpus, seed=0)
    backward = make_tiny_marian(tmp_path / "xx-en", corpus, seed=1)
    split = Split(name="train", source=Path("t.jsonl"), texts=corpus[:6], labels=[0, 1] * 3,
                  source_rows=list(range(1, 7)), text_pairs=[f"pair {i}" for i in range(6)])
    config = AugmentConfig(method="back_translation", forward_model=forward, backward_model=backward,
                           n_per_example=2, batch_size=4)
    augmented, note = augment_split(split, config, seed=0, model=None)
    assert 6 < len(augmented) <= 18 and "back_translation via en-xx and xx-en" in note
    assert augmented.texts[:6] == split.texts
    for i in range(6, len(augmented)):
        row = augmented.source_rows[i]
        assert augmented.labels[i] == split.labels[row - 1]
        assert augmented.text_pairs[i] == f"pair {row - 1}"  # the pair text is kept as it is
        assert augmented.texts[i] and augmented.texts[i] != split.texts[row - 1]
    with pytest.raises(UserError, match="not a model folder"):
        augment_split(split, config.model_copy(update={"forward_model": tmp_path}), seed=0, model=None)
