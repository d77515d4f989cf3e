"""``tuneforge generate RUN_DIR``: text from a trained ``sft`` or ``causal-lm`` run, for one prompt or every row
of a file (the run's instruction/input columns, a ``messages`` column, or a ``prompt`` column)."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.base.errors import UserError
from tuneforge.base.models import load_tokenizer
from tuneforge.base.tables import SOURCE_ROW, read_table, write_table
from tuneforge.core.data.generative import cell_text, prompt_ids
from tuneforge.core.evaluate.generation import generate
from tuneforge.core.recipe import load_run_recipe
from tuneforge.core.tasks import task_for


def generate_from_run(run_dir: str, prompt: str | None, input_file: str | None, output_file: str | None,
                     max_new_tokens: int | None, temperature: float, top_p: float | None, log) -> int:
    """``tuneforge generate RUN_DIR``: answer one prompt, or every row of a file (instruction/input columns
    of the run's recipe, a ``messages`` column, or a ``prompt`` column)."""
    if (prompt is None) == (input_file is None):
        raise UserError("generate: give either --prompt \"...\" or --input FILE --output FILE")
    if input_file is not None and output_file is None:
        raise UserError("generate: --input needs --output FILE (CSV, TSV, JSON, JSONL or Parquet)")
    if output_file is not None and Path(output_file).exists():
        raise UserError(f"{output_file}: already exists; generate never overwrites a file, choose another --output")
    recipe = load_run_recipe(Path(run_dir))
    task = task_for(recipe.task)
    if not task.generates_text:
        raise UserError(f"{run_dir}: a {recipe.task} run does not generate text (generate needs task sft or causal-lm)")
    settings = recipe.generative
    model = task.load_trained(Path(run_dir), recipe)
    tokenizer = load_tokenizer(Path(run_dir) / "model")
    limit = max_new_tokens or settings.generation.max_new_tokens
    sample = ({"temperature": temperature, "top_p": top_p or settings.generation.top_p,
               "top_k": settings.generation.top_k} if temperature > 0 else None)
    system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []

    def to_ids(user_text: str, messages: list | None = None) -> list[int]:
        if recipe.task == "causal-lm":
            return list(tokenizer(user_text, add_special_tokens=True)["input_ids"])
        return prompt_ids(tokenizer, messages if messages is not None else
                          system + [{"role": "user", "content": user_text}], settings)

    device = next(model.parameters()).device
    if prompt is not None:
        if not prompt.strip():
            raise UserError("generate: --prompt is empty")
        print(generate(model, tokenizer, [to_ids(prompt)], limit, 1, device, sample, settings.generation.seed)[0])
        return 0
    frame = read_table(input_file)
    prompts = []
    for index in range(len(frame)):
        row = frame.iloc[index]
        if settings.messages_column and settings.messages_column in frame.columns:
            value = row[settings.messages_column]
            messages = json.loads(value) if isinstance(value, str) else list(value)
            if messages and messages[-1].get("role") == "assistant":
                messages = messages[:-1]
            prompts.append(to_ids("", [{"role": m["role"], "content": str(m["content"])} for m in messages]))
        elif settings.instruction_column in frame.columns:
            extra = cell_text(row.get(settings.input_column)) if settings.input_column else ""
            instruction = cell_text(row[settings.instruction_column])
            prompts.append(to_ids(f"{instruction}\n\n{extra}" if extra else instruction))
        elif "prompt" in frame.columns:
            prompts.append(to_ids(str(row["prompt"])))
        else:
            present = ", ".join(c for c in frame.columns if c != SOURCE_ROW)
            raise UserError(f"{input_file}: no column '{settings.instruction_column}' or 'prompt' to generate from; "
                            f"the file has: {present}")
    answers = generate(model, tokenizer, prompts, limit, settings.generation.batch_size, device, sample,
                       settings.generation.seed)
    result = frame.drop(columns=[SOURCE_ROW]).copy()
    result["generated"] = answers
    write_table(result, output_file)
    log(f"wrote {len(result)} generations to {output_file} "
        f"({'sampled, temperature ' + str(temperature) if sample else 'greedy'}, max {limit} new tokens)")
    return 0
