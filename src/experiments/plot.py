"""Plot the search's progress from log.jsonl: energy, agreement with gold and inconsistent pairs per iteration.

    python src/experiments/plot.py OUT [OUT2 ...] [--output progress.png]

Several run directories are overlaid, one line each.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from src.experiments.figures import RunLog, progress_chart


def run_seed(run_dir: Path) -> Optional[int]:
    """The run's --seed, from run.json's settings, else summary.json's; None if neither says."""
    for name in ("run.json", "summary.json"):
        try:
            settings = json.loads((run_dir / name).read_text(encoding="utf-8")).get("settings")
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
        seed = settings.get("seed") if isinstance(settings, dict) else None
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="ICM.py output directories")
    parser.add_argument("--output", type=Path, default=None, help="default: progress.png in the first run directory")
    args = parser.parse_args(argv)
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
        runs.append(RunLog(run.resolve().name, run_seed(run), records))
    output = args.output or args.runs[0] / "progress.png"
    progress_chart(runs, output)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
