"""``tuneforge explain RUN_DIR``: which tokens drove a text classifier's decision, by integrated gradients.

Integrated gradients (Sundararajan et al., 2017) through Captum's ``LayerIntegratedGradients`` on the output of
the model's input (word) embedding layer: each token's attribution is the integral of the gradient of the target
label's logit along the straight path from a baseline to the text's embeddings, times the difference, summed over
the embedding dimensions. The baseline is the same sequence with every token except the special ones
(``[CLS]``, ``[SEP]``, ...) replaced by the padding token; the integral uses ``steps`` Gauss-Legendre points. By
completeness, the attributions add up to the target logit minus the baseline's target logit; every explanation
records both, so the approximation error can be read off.

The run is loaded as ``tuneforge predict`` loads it (its method rebuilds base + adapter where it cannot merge), so
every text method is explained through the same hook on the word embeddings. Captum is an optional extra
(``pip install 'tuneforge[explain]'``); without it the command says so.

HTML output is one self-contained page (inline CSS, no scripts, nothing fetched): every token coloured by its
attribution, text HTML-escaped.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.base.errors import UserError
from tuneforge.base.models import load_tokenizer
from tuneforge.base.tables import SOURCE_ROW, read_table
from tuneforge.core.recipe import load_run_recipe
from tuneforge.core.tasks import task_for

DEFAULT_STEPS = 50
BASELINE = "padding token at every position except the special tokens ([CLS], [SEP], ...)"


@dataclass
class Explanation:
    """One text's token attributions toward ``label`` (integrated gradients)."""

    text: str
    text_pair: str | None
    tokens: list[str]
    attributions: list[float]
    label: str
    predicted: str
    probability: float  # of ``label``
    predicted_probability: float
    logit_difference: float  # target logit of the text minus that of the baseline
    attribution_sum: float
    steps: int
    baseline: str = BASELINE

    @property
    def completeness_error(self) -> float:
        """|sum of attributions - logit difference| / |logit difference| (integrated gradients' completeness)."""
        return abs(self.attribution_sum - self.logit_difference) / max(abs(self.logit_difference), 1e-12)


def require_captum():
    """Captum's ``LayerIntegratedGradients``, or a UserError saying how to install the optional extra."""
    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError:
        raise UserError("explain: needs Captum, an optional extra: pip install 'tuneforge[explain]' "
                        "(or pip install captum)") from None
    return LayerIntegratedGradients


class Explainer:
    """Integrated-gradients attributions of a finished text-classification run's predictions."""

    def __init__(self, run_dir: str | Path, steps: int = DEFAULT_STEPS) -> None:
        if steps < 1:
            raise UserError(f"explain: --steps must be at least 1 (got {steps})")
        self.integrated_gradients = require_captum()
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise UserError(f"{self.run_dir}: run folder not found")
        self.recipe = load_run_recipe(self.run_dir)  # the model files checked against artifacts.json
        if self.recipe.task != "classification":
            raise UserError(f"explain: not supported yet for task {self.recipe.task} runs (text classification only)")
        labels_path = self.run_dir / "labels.json"
        if not labels_path.is_file():
            raise UserError(f"{self.run_dir}: has no labels.json; did the run finish? (see run.json)")
        self.label_names: list[str] = json.loads(labels_path.read_text(encoding="utf-8"))
        self.tokenizer = load_tokenizer(self.run_dir / "model")
        self.model = task_for(self.recipe.task).load_trained(self.run_dir, self.recipe).eval()  # as predict loads it
        self.embeddings = self.model.get_input_embeddings()
        self.steps = steps

    def label_index(self, label: str | None) -> int | None:
        if label is None:
            return None
        if label not in self.label_names:
            raise UserError(f"explain: --label {label!r} is not one of the run's labels: "
                            f"{', '.join(self.label_names[:30])}")
        return self.label_names.index(label)

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None) -> torch.Tensor:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits.float()

    def explain(self, text: str, text_pair: str | None = None, label: str | None = None) -> Explanation:
        """Attributions of ``text`` (and ``text_pair``) toward ``label`` (default: the predicted label)."""
        if not str(text).strip():
            raise UserError("explain: the text is empty")
        encoded = self.tokenizer(text, text_pair, truncation=True, max_length=self.recipe.data.max_length,
                                 return_tensors="pt")
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        token_type_ids = encoded.get("token_type_ids")
        special = torch.tensor(self.tokenizer.get_special_tokens_mask(input_ids[0].tolist(),
                                                                      already_has_special_tokens=True),
                               dtype=torch.bool).unsqueeze(0)
        baseline_ids = torch.where(special, input_ids, torch.full_like(input_ids, self.tokenizer.pad_token_id))
        with torch.no_grad():
            logits = self._logits(input_ids, attention_mask, token_type_ids)[0]
            baseline_logits = self._logits(baseline_ids, attention_mask, token_type_ids)[0]
        probabilities = torch.softmax(logits, dim=-1)
        predicted = int(probabilities.argmax())
        target = self.label_index(label)
        target = predicted if target is None else target
        method = self.integrated_gradients(self._logits, self.embeddings)
        with torch.enable_grad():
            attributions = method.attribute(input_ids, baselines=baseline_ids, target=target,
                                            additional_forward_args=(attention_mask, token_type_ids),
                                            n_steps=self.steps, internal_batch_size=self.steps)
        per_token = attributions.sum(dim=-1)[0].detach()
        keep = ~special[0]
        tokens = self.tokenizer.convert_ids_to_tokens(input_ids[0][keep].tolist())
        return Explanation(
            text=str(text), text_pair=text_pair, tokens=tokens, attributions=[float(v) for v in per_token[keep]],
            label=self.label_names[target], predicted=self.label_names[predicted],
            probability=float(probabilities[target]), predicted_probability=float(probabilities[predicted]),
            logit_difference=float(logits[target] - baseline_logits[target]),
            attribution_sum=float(per_token.sum()), steps=self.steps)

    def probabilities(self, input_ids: list[int]) -> np.ndarray:
        """Softmax probabilities of one token-id sequence (special tokens included), for deletion tests."""
        ids = torch.tensor([input_ids])
        with torch.no_grad():
            return torch.softmax(self._logits(ids, torch.ones_like(ids), None)[0], dim=-1).numpy()


# ----------------------------------------------------------------------------- rendering

CSS = """body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:24px;color:#1d2330}
.row{border-bottom:1px solid #e4e7ed;padding:10px 0} .meta{font-size:12.5px;color:#556;margin-bottom:4px}
.tok{padding:1px 2px;border-radius:3px;line-height:1.9} .muted{color:#667;font-size:13px}
.key span{padding:1px 6px;border-radius:3px;margin-right:6px}"""


def display_tokens(tokens: list[str]) -> list[tuple[str, bool]]:
    """(shown text, starts a new word) per token: WordPiece ``##`` and SentencePiece ``▁`` / byte-level ``Ġ``
    markers become word boundaries."""
    shown = []
    for index, token in enumerate(tokens):
        if token.startswith("##"):
            shown.append((token[2:], False))
        elif token.startswith(("▁", "Ġ")):
            shown.append((token[1:], True))
        else:
            shown.append((token, index == 0 or not tokens[0].startswith(("▁", "Ġ"))))
    return shown


def token_colour(value: float, scale: float) -> str:
    """Green for attributions toward the label, red against it; the stronger, the more opaque."""
    alpha = min(1.0, abs(value) / scale) * 0.75 if scale > 0 else 0.0
    return f"rgba(22,150,70,{alpha:.3f})" if value >= 0 else f"rgba(210,40,40,{alpha:.3f})"


def highlight_html(tokens: list[str], attributions: list[float]) -> str:
    """The tokens as HTML spans coloured by attribution (each token's value in its title), HTML-escaped."""
    scale = max((abs(v) for v in attributions), default=0.0)
    parts = []
    for (shown, new_word), value in zip(display_tokens(tokens), attributions):
        parts.append(("" if not parts or not new_word else " ")
                     + f'<span class="tok" style="background:{token_colour(value, scale)}" '
                       f'title="{value:+.3g}">{html.escape(shown)}</span>')
    return "".join(parts)


def explanation_html(explanation: Explanation) -> str:
    """One explained row: its prediction, the completeness check, the coloured tokens."""
    return (f'<div class="row"><div class="meta">toward <b>{html.escape(explanation.label)}</b> '
            f'(p {explanation.probability:.3f}); predicted {html.escape(explanation.predicted)} '
            f'(p {explanation.predicted_probability:.3f}); sum of attributions {explanation.attribution_sum:+.3f}, '
            f'logit difference {explanation.logit_difference:+.3f}</div>'
            f'{highlight_html(explanation.tokens, explanation.attributions)}</div>')


def explanations_page(title: str, explanations: list[Explanation]) -> str:
    """A whole self-contained HTML page of explained rows (no scripts, nothing loaded from anywhere)."""
    steps = explanations[0].steps if explanations else DEFAULT_STEPS
    key = ('<p class="key"><span style="background:rgba(22,150,70,.6)">toward the label</span>'
           '<span style="background:rgba(210,40,40,.6)">against it</span></p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{key}"
            f'<p class="muted">Integrated gradients on the input embeddings, {steps} steps; baseline: '
            f"{html.escape(BASELINE)}. Hover a token for its attribution.</p>"
            + "".join(explanation_html(e) for e in explanations) + "</body></html>\n")


def format_explanation(explanation: Explanation) -> str:
    """Plain text for the terminal: the prediction, then each token with its attribution."""
    tokens = " ".join(f"{shown if new_word else '##' + shown}[{value:+.3f}]" for (shown, new_word), value in
                      zip(display_tokens(explanation.tokens), explanation.attributions))
    return (f"predicted {explanation.predicted} (p {explanation.predicted_probability:.4f}); attributions toward "
            f"{explanation.label} (p {explanation.probability:.4f})\n{tokens}\n"
            f"integrated gradients, {explanation.steps} steps, baseline: {explanation.baseline}; "
            f"sum {explanation.attribution_sum:+.4f} vs logit difference {explanation.logit_difference:+.4f}")


def explain_file(explainer: Explainer, input_file: str | Path, output_file: str | Path,
                 label: str | None = None) -> list[Explanation]:
    """Explain every row of ``input_file`` (the run's text column) into ``output_file`` (.jsonl or .html)."""
    output = Path(output_file)
    if output.suffix.lower() not in (".jsonl", ".html"):
        raise UserError(f"explain: --output {output} must end in .jsonl or .html")
    if output.exists():
        raise UserError(f"{output}: already exists; explain never overwrites a file, choose another --output")
    data = explainer.recipe.data
    frame = read_table(input_file)
    if data.text_column not in frame.columns:
        present = ", ".join(c for c in frame.columns if c != SOURCE_ROW)
        raise UserError(f"{input_file}: no column '{data.text_column}' (the run was trained on it); the file has: "
                        f"{present}")
    pairs = frame[data.text_pair_column].astype(str).tolist() if data.text_pair_column in frame.columns else None
    explanations = []
    for index, text in enumerate(frame[data.text_column].astype(str).tolist()):
        if not text.strip():
            raise UserError(f"{input_file}: empty text at row {frame[SOURCE_ROW].iloc[index]}; fix or remove it")
        explanations.append(explainer.explain(text, pairs[index] if pairs else None, label))
    temporary = output.with_name(output.name + ".tmp")
    if output.suffix.lower() == ".html":
        temporary.write_text(explanations_page(f"tuneforge explain: {explainer.run_dir.name}", explanations),
                             encoding="utf-8")
    else:
        temporary.write_text("".join(json.dumps(row_record(e), ensure_ascii=False) + "\n" for e in explanations),
                             encoding="utf-8")
    temporary.replace(output)
    return explanations


def row_record(explanation: Explanation) -> dict[str, Any]:
    """An explanation as one JSON line."""
    return {**asdict(explanation), "completeness_error": explanation.completeness_error}


# ----------------------------------------------------------------------------- report.html's confident errors

# Integration steps of the report's highlighted errors: fewer than the command's default, so the report stays fast.
REPORT_STEPS = 20


def highlight_rows(run_dir: str | Path, texts: list[str], text_pairs: list[str] | None, labels: list[str],
                   steps: int = REPORT_STEPS) -> tuple[list[str] | None, str]:
    """(HTML of each text's tokens coloured by its attribution toward ``labels[i]``, a caption), or
    (None, why not) when the run cannot be explained (Captum missing, no model, not a text classifier)."""
    try:
        explainer = Explainer(run_dir, steps=steps)
    except UserError as error:
        return None, f"tokens not highlighted: {error}"
    marked = [highlight_html(e.tokens, e.attributions) for e in
              (explainer.explain(text, text_pairs[i] if text_pairs else None, labels[i])
               for i, text in enumerate(texts))]
    return marked, (f"Tokens coloured by integrated gradients toward the predicted label (green: toward it, red: "
                    f"against it; {steps} steps, baseline: {BASELINE}); `tuneforge explain` gives the numbers.")
