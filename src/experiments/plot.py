"""Plot the search's progress from log.jsonl: energy, agreement with gold and inconsistent pairs per iteration.

    python src/experiments/plot.py OUT [OUT2 ...] [--output progress.png]

Several run directories are overlaid, one line each.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from src.experiments.figures import progress_chart


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="ICM.py output directories")
    parser.add_argument("--output", type=Path, default=None, help="default: progress.png in the first run directory")
    args = parser.parse_args()
    runs = []
    for run in args.runs:
        log = run / "log.jsonl"
        if not log.is_file():
            print(f"error: {run} has no log.jsonl; pass ICM.py output directories", file=sys.stderr)
            return 2
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if not records:
            print(f"error: {log} is empty: the run logged no iteration yet", file=sys.stderr)
            return 2
        runs.append((run.name, records))
    output = args.output or args.runs[0] / "progress.png"
    progress_chart(runs, output)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
