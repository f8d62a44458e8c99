"""Plot a run's progress from log.jsonl: energy, agreement with gold and inconsistent pairs per iteration (a
baseline labeller's per round; the title names the labellers).

    python src/experiments/plot.py OUT [OUT2 ...] [--output progress.png]

Several run directories are overlaid, one line each.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from core.process_exit import exit_process
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.evaluation.figures import RunLog, figure_formats, progress_chart
from src.run_directory.output_paths import recorded_data_files, refuse_run_file, refuse_writing_over, run_files
from src.run_directory.run_directory import LOG_FILE, PROGRESS_FIGURE, RunDirectory, atomic_path
from src.run_directory.run_reading import read_json_lines, run_settings


def run_seed(run_dir: Path) -> Optional[int]:
    """The run's --seed, from its record's settings (run.json), else its summary's; None if neither says."""
    files = RunDirectory(run_dir)
    for path in (files.run_file, files.summary_file):
        try:
            settings = json.loads(path.read_text(encoding="utf-8")).get("settings")
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
        seed = settings.get("seed") if isinstance(settings, dict) else None
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="ICM.py output directories")
    parser.add_argument("--output", type=Path, default=None, help=f"default: {PROGRESS_FIGURE} in the first run directory")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(lambda: plot(build_parser().parse_args(argv)))


def log_line_problem(record: dict) -> str:
    """What keeps a log.jsonl record from being drawn, or "" if nothing does."""
    at = record.get("iter")
    if not isinstance(at, int) or isinstance(at, bool) or at < 0:
        return f"its iter is {at!r}, not an iteration number"
    for field in ("energy", "train_accuracy", "inconsistent_num"):
        value = record.get(field)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return f"its {field} is {value!r}, not a number"
    return ""


def plot(args: argparse.Namespace) -> int:
    output = args.output or RunDirectory(args.runs[0]).progress_figure
    for run in args.runs:
        refuse_writing_over(output, "--output", run_files(run) + recorded_data_files(run_settings(run)), folder=False)
    refuse_run_file(output, "--output")
    formats = figure_formats()
    if output.suffix.lstrip(".").lower() not in formats:
        raise UserError(f"--output {output}: a figure's name must end in one of {', '.join('.' + f for f in sorted(formats))} "
                        "(matplotlib picks the format by it)")
    runs = []
    for run in args.runs:
        log = RunDirectory(run).log_file
        if not log.is_file():
            raise UserError(f"{run} has no {LOG_FILE}; pass ICM.py output directories")
        records = read_json_lines(log, f"repair or delete that line, or resume the run (ICM.py --resume {run}), "
                                       "which checks its log", cut_last_line_ok=True, check=log_line_problem)
        if not records:
            raise UserError(f"{log} is empty: the run logged no iteration yet")
        labeller = run_settings(run).get("labeller")
        runs.append(RunLog(run.resolve().name, run_seed(run), records, labeller if isinstance(labeller, str) else None))
    with atomic_path(output) as temporary:  # a stop mid-write leaves the old figure, not half a new one
        progress_chart(runs, temporary)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    exit_process(main())
