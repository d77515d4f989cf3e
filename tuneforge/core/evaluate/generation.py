"""Scores of generated text against references: exact match and ROUGE-L (longest common subsequence F1).

ROUGE-L follows Lin (2004) with the tokenization of Google's ``rouge-score`` package (lowercase, every run
of characters other than a-z and 0-9 is a separator, no stemming): F = (1 + b^2) P R / (R + b^2 P) with
b = 1, P = LCS / candidate tokens, R = LCS / reference tokens.
"""

from __future__ import annotations

import re

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """Lowercased alphanumeric tokens."""
    return [token for token in _NON_ALPHANUMERIC.split(text.lower()) if token]


def lcs_length(first: list[str], second: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, two rows)."""
    if not first or not second:
        return 0
    previous = [0] * (len(second) + 1)
    for item in first:
        current = [0]
        for j, other in enumerate(second):
            current.append(previous[j] + 1 if item == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of one candidate against one reference (0 when either has no tokens)."""
    candidate_tokens, reference_tokens = rouge_tokens(candidate), rouge_tokens(reference)
    common = lcs_length(candidate_tokens, reference_tokens)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate_tokens), common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def normalise_answer(text: str) -> str:
    """Whitespace-collapsed, lowercased, without trailing punctuation: what exact match compares."""
    return " ".join(text.lower().split()).rstrip(" .!?")


def exact_match(candidate: str, reference: str) -> bool:
    return normalise_answer(candidate) == normalise_answer(reference)


def generation_scores(candidates: list[str], references: list[str]) -> dict[str, float]:
    """Mean exact match and ROUGE-L F1 over pairs."""
    if not candidates:
        return {"exact_match": float("nan"), "rouge_l": float("nan"), "n_examples": 0}
    return {"exact_match": sum(map(exact_match, candidates, references)) / len(candidates),
            "rouge_l": sum(map(rouge_l, candidates, references)) / len(candidates),
            "n_examples": len(candidates)}
