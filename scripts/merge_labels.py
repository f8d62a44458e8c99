"""Merge the labels of a sharded ICM run (ICM.py --num-batches N --batch-index i) into one file.

    python scripts/merge_labels.py OUT_0 OUT_1 ... OUT_{N-1} --output MERGED

Refuses runs that don't belong together: other settings, a shard missing or given twice, a run that did not
finish, or a record labelled by two shards.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from core.process_exit import exit_process
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.run_directory.output_paths import refuse_run_folder, refuse_writing_over
from src.run_directory.run_directory import LABELS_FILE, SUMMARY_FILE, RunDirectory
from src.run_directory.run_outputs import jsonl
from src.run_directory.run_reading import label_row_problem, read_json_lines, read_json_object, rewrite_advice

# Settings that differ between the jobs of one sharded run, or don't change what was computed.
PER_JOB = {"batch_index", "cache_dir", "no_cache", "data_dir", "data"}


class MergeError(UserError):
    pass


def read_shard(run: Path) -> tuple[dict, dict, list[dict]]:
    files = RunDirectory(run)
    for path in (files.run_file, files.summary_file, files.labels_file):
        if not path.is_file():
            raise MergeError(f"{run}: no {path.name}; pass the output directories of finished ICM.py runs")
    resume = rewrite_advice(run)
    settings = read_json_object(files.run_file, "restore it from a copy; it records how the shard was made").get("settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("K"), int):
        raise MergeError(f"{files.run_file} is damaged (no settings or K): restore it from a copy")
    summary = read_json_object(files.summary_file, resume)
    rows = read_json_lines(files.labels_file, resume, check=label_row_problem)
    if settings.get("num_batches") is None:
        raise MergeError(f"{run}: not a sharded run (it was started without --num-batches)")
    if not isinstance(settings.get("num_batches"), int) or not isinstance(settings.get("batch_index"), int):
        raise MergeError(f"{files.run_file} is damaged (num_batches or batch_index is not a number): restore it from a copy")
    if summary.get("stopped_early") or summary.get("iterations") != settings["K"]:
        raise MergeError(f"{run}: the run did not finish ({summary.get('iterations')} of {settings['K']} iterations); "
                         f"finish it with ICM.py --resume {run}")
    return settings, summary, rows


def merge(runs: list[Path]) -> tuple[list[dict], dict]:
    shards = [(run, *read_shard(run)) for run in runs]
    first_run, first = shards[0][0], shards[0][1]
    common = {k: v for k, v in first.items() if k not in PER_JOB}
    for run, settings, _, _ in shards[1:]:
        differing = sorted(k for k in set(common) | (set(settings) - PER_JOB) if settings.get(k) != common.get(k))
        if differing:
            name = differing[0]
            raise MergeError(f"{run} was run with {name}={settings.get(name)!r} but {first_run} with {common.get(name)!r}: "
                             "these are not shards of one run")
    indices = [settings["batch_index"] for _, settings, _, _ in shards]
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        raise MergeError(f"shard {repeated[0]} is given twice")
    missing = sorted(set(range(first["num_batches"])) - set(indices))
    if missing:
        raise MergeError(f"shard(s) {', '.join(map(str, missing))} of {first['num_batches']} missing: pass every --batch-index's output")

    merged, owner = [], {}
    for run, settings, _, rows in sorted(shards, key=lambda shard: shard[1]["batch_index"]):
        for row in rows:
            record = row.get("record")
            if record in owner:
                raise MergeError(f"record {record} (consistency_id {row['consistency_id']!r}) is in both {owner[record]} and {run}")
            owner[record] = run
            merged.append({"shard": settings["batch_index"], **row})
    labelled = [r for r in merged if r["label"] is not None]
    with_gold = [r for r in labelled if r.get("gold_label") is not None]
    summary = {
        "testbed": first["testbed"], "num_batches": first["num_batches"], "seed": first["seed"],
        "shards": [{"batch_index": s["batch_index"], "run": str(run), "claims": len(rows), "final": summ.get("final")}
                   for run, s, summ, rows in sorted(shards, key=lambda shard: shard[1]["batch_index"])],
        "settings": common, "claims": len(merged), "labelled": len(labelled),
        "agreement_with_gold": sum(r["label"] == r["gold_label"] for r in with_gold) / len(with_gold) if with_gold else None,
    }
    return merged, summary


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="the output directories of the shards")
    parser.add_argument("--output", type=Path, required=True,
                        help=f"folder for the merged {LABELS_FILE} and {SUMMARY_FILE}: not a shard, nor inside or around one")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(lambda: write_merge(build_parser().parse_args(argv)))


def write_merge(args: argparse.Namespace) -> int:
    refuse_writing_over(args.output, "--output", [("the shard", run) for run in args.runs], folder=True)
    refuse_run_folder(args.output, "--output")
    rows, summary = merge(args.runs)
    args.output.mkdir(parents=True, exist_ok=True)
    merged = RunDirectory(args.output)
    merged.write(merged.labels_file, jsonl(rows))
    merged.write(merged.summary_file, json.dumps(summary, indent=2) + "\n")
    print(f"merged {len(args.runs)} shards, {summary['claims']} claims ({summary['labelled']} labelled) into {args.output}")
    return 0


if __name__ == "__main__":
    exit_process(main())
