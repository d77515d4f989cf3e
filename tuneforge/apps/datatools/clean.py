"""``tuneforge data clean``: a cleaned copy of a labelled file, and a log of every change.

The input is never edited. Steps, in this order (each only when asked):

1. ``--drop-empty``: remove rows whose text (or pair text) is empty or whitespace only.
2. ``--resolve-conflicts majority|drop``: for each text (normalised as in ``data inspect``) that appears
   under more than one label, ``majority`` relabels every row to the most frequent label (a tie drops
   the group: there is no majority to follow) and ``drop`` removes every row of the group.
3. ``--dedupe [exact|near]``: keep the first row of each text and remove its later copies with the
   same label (``exact``: identical text; ``near``: identical normalised text). Copies that still
   disagree on the label (conflicts not resolved) are kept, and the log says so in the summary.

The log (CSV) has one line per removed or relabelled row: its original row number (line number for
CSV/TSV/JSONL, record number otherwise), the action, the reason, the text, the old and the new label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tuneforge.apps.datatools.inspect import label_strings, read_labelled, row_keys
from tuneforge.base.tables import SOURCE_ROW, write_table
from tuneforge.base.errors import UserError


@dataclass
class CleanResult:
    rows_in: int
    rows_out: int
    removed: int
    relabelled: int
    output: Path
    log: Path
    counts: dict[str, int]


def clean_file(path: str | Path, output: str | Path, text_column: str = "text", label_column: str = "label",
               text_pair_column: str | None = None, dedupe: str | None = None,
               resolve_conflicts: str | None = None, drop_empty: bool = False,
               log_path: str | Path | None = None) -> CleanResult:
    """Write the cleaned copy of ``path`` to ``output`` and the change log; return the counts."""
    path, output = Path(path), Path(output)
    log_path = Path(log_path) if log_path else output.with_name(output.stem + ".clean_log.csv")
    if dedupe not in (None, "exact", "near"):
        raise UserError(f"--dedupe {dedupe}: use exact or near")
    if resolve_conflicts not in (None, "majority", "drop"):
        raise UserError(f"--resolve-conflicts {resolve_conflicts}: use majority or drop")
    if not (dedupe or resolve_conflicts or drop_empty):
        raise UserError("data clean: nothing to do; give at least one of --dedupe, --resolve-conflicts, --drop-empty")
    if path.exists() and output.exists() and output.resolve() == path.resolve():
        raise UserError(f"{output}: is the input file; data clean never edits its input, choose another --output")
    for target in (output, log_path):
        if target.exists():
            raise UserError(f"{target}: already exists; data clean never overwrites a file, choose another --output")
    frame = read_labelled(path, text_column, label_column, text_pair_column)
    raw, norm, empty = row_keys(frame, text_column, text_pair_column)
    labels = label_strings(frame[label_column])
    keep = pd.Series(True, index=frame.index)
    new_labels = labels.copy()
    log: list[dict] = []
    counts = {"empty": 0, "conflict_relabelled": 0, "conflict_dropped": 0, "duplicate": 0,
              "duplicate_kept_other_label": 0}

    def record(index, action: str, reason: str, new_label: str | None = None) -> None:
        log.append({"row": int(frame.at[index, SOURCE_ROW]), "action": action, "reason": reason,
                    "text": frame.at[index, text_column], "label": labels[index],
                    "new_label": new_label if new_label is not None else ""})

    if drop_empty:
        for index in frame.index[empty]:
            keep[index] = False
            record(index, "removed", "empty or whitespace-only text")
            counts["empty"] += 1

    if resolve_conflicts:
        live = keep & ~empty & (labels != "")
        groups = pd.DataFrame({"norm": norm[live], "label": labels[live]}).groupby("norm")["label"]
        conflicted = groups.nunique()
        for key in conflicted.index[conflicted > 1]:
            members = frame.index[live & (norm == key)]
            tally = labels[members].value_counts()
            tie = len(tally) > 1 and tally.iloc[0] == tally.iloc[1]
            if resolve_conflicts == "drop" or tie:
                why = ("conflicting labels " if resolve_conflicts == "drop" else "conflicting labels, no majority ") \
                    + "(" + ", ".join(f"{k}: {v}" for k, v in tally.items()) + ")"
                for index in members:
                    keep[index] = False
                    record(index, "removed", why)
                    counts["conflict_dropped"] += 1
            else:
                winner = tally.index[0]
                why = "conflicting labels, majority " + "(" + ", ".join(f"{k}: {v}" for k, v in tally.items()) + ")"
                for index in members:
                    if labels[index] != winner:
                        new_labels[index] = winner
                        record(index, "relabelled", why, winner)
                        counts["conflict_relabelled"] += 1

    if dedupe:
        key = raw if dedupe == "exact" else norm
        seen: dict[tuple[str, str], int] = {}
        first_label: dict[str, str] = {}
        for index in frame.index[keep & ~empty]:
            identity = (key[index], new_labels[index])
            if identity in seen:
                keep[index] = False
                record(index, "removed", f"{'exact' if dedupe == 'exact' else 'near'} duplicate of row {seen[identity]}")
                counts["duplicate"] += 1
            else:
                seen[identity] = int(frame.at[index, SOURCE_ROW])
                if key[index] in first_label and first_label[key[index]] != new_labels[index]:
                    counts["duplicate_kept_other_label"] += 1
                first_label.setdefault(key[index], new_labels[index])

    cleaned = frame.loc[keep].copy()
    cleaned[label_column] = _restore_type(frame[label_column], new_labels)[keep]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_table(cleaned, output)
    except OSError as exc:
        raise UserError(f"{output}: cannot write ({exc.strerror})") from None
    log_frame = pd.DataFrame(log, columns=["row", "action", "reason", "text", "label", "new_label"])
    log_frame.sort_values("row", kind="stable").to_csv(log_path, index=False)
    relabelled = int((log_frame["action"] == "relabelled").sum())
    return CleanResult(rows_in=len(frame), rows_out=int(keep.sum()), removed=int((~keep).sum()),
                       relabelled=relabelled, output=output, log=log_path, counts=counts)


def _restore_type(original: pd.Series, relabelled: pd.Series) -> pd.Series:
    """Keep the label column's type (ints stay ints) where nothing changed; new labels take the type of a donor."""
    out = original.copy().astype(object)
    strings = label_strings(original)
    changed = relabelled != strings
    if changed.any():
        donors: dict[str, object] = {}
        for text, value in zip(strings.tolist(), original.tolist()):
            donors.setdefault(text, value)
        out[changed] = relabelled[changed].map(lambda v: donors.get(v, v))
    return out
