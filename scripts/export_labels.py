"""Export a run's labels for fine-tuning.

    python scripts/export_labels.py OUT --format sft   # {"prompt", "completion"} JSONL, for SFT tools
    python scripts/export_labels.py OUT --format hf    # one record per claim, for datasets.load_dataset("json", ...)

Only claims the search labelled are exported. The prompt is the claim exactly as ICM showed it to the model,
and the completion is the label token in the run's label style (" True" / " False" by default).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from core.process_exit import exit_process
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.config.run_config import RunConfig
from src.run_directory.output_paths import recorded_data_files, refuse_run_file, refuse_writing_over, run_files
from src.prompts.prompts import LABEL_WORDS, query_text
from src.run_directory.run_directory import LABELS_FILE, RunDirectory, export_file_name, write_atomically
from src.run_directory.run_outputs import jsonl
from src.run_directory.run_reading import label_row_problem, read_json_lines, rewrite_advice, run_settings, run_summary
from src.run_directory.run_status import warn_if_partial

HF_FIELDS = ("uid", "consistency_id", "question", "choice", "choice_2", "answer", "prompt", "label", "gold_label", "score",
             "initial_random_label")
# labels.jsonl fields under the names older versions wrote: old name -> name now.
RENAMED_FIELDS = {"seed": "initial_random_label"}


def export_rows(rows: list[dict], fmt: str, label_style: str) -> list[dict]:
    rows = [{RENAMED_FIELDS.get(name, name): value for name, value in r.items()} for r in rows]
    labelled = [r for r in rows if r["label"] is not None]
    if fmt == "sft":
        space = "" if label_style == "reference" else " "
        return [{"prompt": query_text(r["prompt"], label_style), "completion": space + LABEL_WORDS[int(r["label"])]} for r in labelled]
    # One schema for every record, so that a columnar reader sees consistent columns.
    present = [f for f in HF_FIELDS if any(f in r for r in labelled)]
    return [{f: r.get(f) for f in present} for r in labelled]


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--format", choices=("sft", "hf"), required=True)
    parser.add_argument("--output", type=Path, default=None, help=f"default: OUT/{export_file_name('<format>')}")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(lambda: export(build_parser().parse_args(argv)))


def export(args: argparse.Namespace) -> int:
    files = RunDirectory(args.run_dir)
    labels = files.labels_file
    if not labels.is_file():
        raise UserError(f"{args.run_dir} has no {LABELS_FILE}; pass an ICM.py output directory")
    settings = run_settings(args.run_dir)
    output = args.output or files.export_file(args.format)
    refuse_writing_over(output, "--output", run_files(args.run_dir) + recorded_data_files(settings), folder=False)
    refuse_run_file(output, "--output")
    rows = read_json_lines(labels, rewrite_advice(args.run_dir), check=label_row_problem)
    exported = export_rows(rows, args.format, RunConfig.from_json(settings).prompts.label_style)
    if not exported:
        raise UserError(f"{labels} has no labelled claims to export")
    run_summary(args.run_dir)  # damage is refused; warn_if_partial only warns
    warn_if_partial(args.run_dir)
    write_atomically(output, jsonl(exported))
    print(f"wrote {len(exported)} records to {output}")
    return 0


if __name__ == "__main__":
    exit_process(main())
