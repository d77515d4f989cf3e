"""The baseline: a plain, idiomatic Hugging Face Trainer (+ PEFT) script, as a practitioner writes it.

Plain (default): it follows the transformers text-classification example: tokenize with padding to
max_length, then Trainer with TrainingArguments, no evaluation during training.

``--expert``: the same script as a practitioner who knows the Trainer writes it: no padding at tokenization,
``DataCollatorWithPadding`` (each batch padded to its longest row), ``train_sampling_strategy="group_by_length"``
(transformers 5's name for the length-grouped sampler), transformers' default optimizer (fused AdamW), and an
evaluation on ``--validation`` after every epoch, as tuneforge does.

Run by bench/vs_hf_trainer.py; writes one JSON result file (accuracy, trainable parameters, whole-script
and ``trainer.train()`` seconds).

    python bench/hf_trainer_baseline.py --model DIR --train F --test F --method full --epochs 2 --out result.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--method", choices=["full", "lora", "freeze", "freeze-top2"], required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--expert", action="store_true", help="dynamic padding, length grouping, per-epoch eval")
    parser.add_argument("--validation", help="with --expert: the file evaluated after every epoch")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    started = time.perf_counter()

    from datasets import load_dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    set_seed(args.seed)
    files = {"train": args.train, "test": args.test}
    if args.expert and args.validation:
        files["validation"] = args.validation
    raw = load_dataset("json", data_files=files)
    if args.limit:
        raw["train"] = raw["train"].select(range(min(args.limit, len(raw["train"]))))
    labels = sorted(set(raw["train"]["label"]))
    label2id = {name: i for i, name in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def preprocess(batch):
        encoded = tokenizer(batch["text"], padding=False if args.expert else "max_length", max_length=args.max_length,
                            truncation=True)
        encoded["label"] = [label2id[name] for name in batch["label"]]
        return encoded

    data = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    if args.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=16, lora_alpha=32, lora_dropout=0.1))
    elif args.method.startswith("freeze"):
        # The same parameters as tuneforge's freeze: embeddings and the bottom layers frozen; the top
        # layers (none, or 2), the pooler and the classifier train.
        top = 2 if args.method == "freeze-top2" else 0
        layers = model.config.num_hidden_layers
        frozen = ("bert.embeddings.",) + tuple(f"bert.encoder.layer.{i}." for i in range(layers - top))
        for name, parameter in model.named_parameters():
            parameter.requires_grad = not name.startswith(frozen)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

    expert = {"train_sampling_strategy": "group_by_length",
              "eval_strategy": "epoch" if "validation" in data else "no"} if args.expert else {"eval_strategy": "no"}
    training_args = TrainingArguments(
        output_dir=args.workdir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size, learning_rate=args.learning_rate, weight_decay=0.01,
        warmup_steps=0.1, lr_scheduler_type="linear", max_grad_norm=1.0, seed=args.seed, use_cpu=True,
        save_strategy="no", logging_steps=50, report_to=[], disable_tqdm=True, **expert)
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], compute_metrics=accuracy,
                      eval_dataset=data["validation"] if "validation" in data else None,
                      data_collator=DataCollatorWithPadding(tokenizer) if args.expert else None)
    trained = trainer.train()
    metrics = trainer.evaluate(data["test"])
    with open(args.out, "w") as stream:
        json.dump({"accuracy": metrics["eval_accuracy"], "trainable_params": trainable,
                   "train_seconds": trained.metrics["train_runtime"], "seconds": time.perf_counter() - started},
                  stream)


if __name__ == "__main__":
    main()
