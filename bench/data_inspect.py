"""Time `tuneforge data inspect` on a large file made from real data by repetition.

    python bench/data_inspect.py [--source ../shared/data/banking77/train.jsonl] [--rows 100000] [--model minilm]

Repeats the source rows (every copy after the first gets a suffix on one in ten rows, so the file holds
exact duplicates, near-duplicates and unique texts at once) up to --rows, writes a JSONL file, then runs
the whole inspect (tokenizer lengths included, with the source file's test split as --against when it
exists) and prints one JSON object with the timings: wall-clock seconds and this process's CPU
seconds (the two differ when other work shares the cores; the load average is printed too). Target: under 60 s for 100k rows on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(DEFAULT_SOURCE))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--model", default="minilm")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    source = Path(args.source)
    lines = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    against = source.with_name("test.jsonl")
    with tempfile.TemporaryDirectory() as folder:
        big = Path(folder) / "big.jsonl"
        with big.open("w", encoding="utf-8") as handle:
            for i in range(args.rows):
                row = dict(lines[i % len(lines)])
                copy = i // len(lines)
                if copy and i % 10 == 0:
                    row["text"] = f"{row['text']} (v{copy})"
                handle.write(json.dumps(row) + "\n")

        from tuneforge.apps.datatools.inspect import inspect_file, write_report

        started, cpu_started = time.perf_counter(), time.process_time()
        report = inspect_file(big, against=against if against.is_file() else None, model=args.model)
        seconds_inspect = time.perf_counter() - started
        cpu_inspect = time.process_time() - cpu_started
        write_report(report, Path(folder) / "report")
        seconds_total = time.perf_counter() - started
    print(json.dumps({
        "rows": report["rows"], "source": str(source), "model": args.model,
        "against": str(against) if against.is_file() else None,
        "seconds_inspect": round(seconds_inspect, 2), "cpu_seconds_inspect": round(cpu_inspect, 2), "seconds_with_json_and_html": round(seconds_total, 2),
        "exact_duplicate_rows": report["exact_duplicates"]["rows"],
        "near_duplicate_rows": report["near_duplicates"]["rows"],
        "conflicting_label_groups": report["conflicting_labels"]["groups"],
        "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
    }, indent=1))


if __name__ == "__main__":
    main()
