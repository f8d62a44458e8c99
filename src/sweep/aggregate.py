"""A sweep's results in two tables: OUT/sweep.csv (one row per cell) and OUT/sweep_summary.csv (the cells of one
setting grouped over their seeds: mean and 95% t-interval).

Everything is read from the cells' own files, what each has: labels.jsonl (pool-label accuracy against gold),
summary.json (the run's end), eval.json (test accuracy, written by evaluate.py). A column whose file a cell
lacks is left empty, and so are the test columns of an eval.json made from other labels than the cell's
labels.jsonl holds now (a cell resumed after it was evaluated): it describes labels that no longer exist.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from core.errors import UserError
from src.data.claims import share_of_true
from src.evaluation.comparison import GOLD, ZERO_SHOT, gap_recovered, pool_label_accuracy, t_interval
from src.evaluation.no_gold_signals import run_signals, seed_signals, share_true_drift
from src.run_directory.run_directory import RunDirectory, write_atomically
from src.run_directory.run_reading import label_row_problem, read_json_lines, read_json_object, rewrite_advice
from src.sweep.cell_runs import cell_state
from src.sweep.grid import AXES, Cell
from src.sweep.sweep_record import Sweep

SWEEP_CSV = "sweep.csv"
SWEEP_SUMMARY_CSV = "sweep_summary.csv"
AXIS_COLUMNS = [axis.setting for axis in AXES]
CELL_COLUMNS = [
    "index", "cell", *AXIS_COLUMNS, "state",
    "pool_size", "labelled", "gold_labelled", "pool_label_accuracy", "share_true",
    "final_energy", "inconsistent_num", "iterations", "converged", "pool_scores_computed", "pool_scores_reused",
    "wall_seconds", "stopped_early",
    "requests_per_claim", "computed_tokens_per_claim", "dollars",
    "test_accuracy", "test_ci_low", "test_ci_high", "n_test", "zero_shot_accuracy", "gold_accuracy",
    "gap_recovered", "gap_recovered_ci_low", "gap_recovered_ci_high",
    "share_true_first", "share_true_drift",
]
# What sweep_summary.csv gives a mean and interval of, over the seeds of one setting.
SUMMARY_METRICS = ("pool_label_accuracy", "test_accuracy", "gap_recovered")
GROUP_COLUMNS = [name for name in AXIS_COLUMNS if name != "seed"]
# Signals without gold over the seeds of one setting (src/evaluation/no_gold_signals.seed_signals).
SIGNAL_COLUMNS = ["seed_agreement_mean", "seed_pairs_compared", "seed_pairs_flipped", "final_energy_mean",
                  "inconsistent_num_mean", "share_true_drift_mean"]
SUMMARY_COLUMNS = [*GROUP_COLUMNS, "cells", "done",
                   *(f"{metric}_{part}" for metric in SUMMARY_METRICS for part in ("n", "mean", "ci_low", "ci_high")),
                   *SIGNAL_COLUMNS]


@dataclass
class CellResult:
    cell: Cell
    row: dict[str, Any]  # CELL_COLUMNS -> value (None: not known)
    log: list[dict] = field(default_factory=list)  # log.jsonl's records, for the figure


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def label_columns(rows: Sequence[dict]) -> dict[str, Any]:
    """From labels.jsonl's rows: the pool's size, how many claims are labelled and how many of those have gold,
    pool-label accuracy against gold (comparison.pool_label_accuracy) and the share of labelled claims labelled True."""
    labelled = [r for r in rows if r.get("label") is not None]
    accuracy = pool_label_accuracy(rows)
    return {"pool_size": len(rows), "labelled": len(labelled), "gold_labelled": accuracy["n"] if accuracy else 0,
            "pool_label_accuracy": accuracy["accuracy"] if accuracy else None,
            "share_true": share_of_true(r.get("label") for r in rows)}


def eval_columns(report: dict) -> dict[str, Any]:
    """The test-set columns of a cell from its eval.json: the run's own condition (eval.json's "run_condition") with
    its bootstrap interval, zero-shot and golden accuracy, and the gap recovered with its paired bootstrap interval
    (comparison.gap_recovered, from the per-item correctness). An eval.json written before those existed gives
    empty columns rather than numbers computed some other way."""
    columns: dict[str, Any] = {}
    conditions = report.get("conditions") if isinstance(report.get("conditions"), dict) else {}
    own = conditions.get(report.get("run_condition"))
    if not isinstance(own, dict) or not all(isinstance(conditions.get(c), dict) for c in (ZERO_SHOT, GOLD)):
        return columns
    zero, gold = conditions[ZERO_SHOT], conditions[GOLD]
    columns.update(test_accuracy=_number(own.get("accuracy")), test_ci_low=_number(own.get("ci_low")),
                   test_ci_high=_number(own.get("ci_high")), n_test=_number(own.get("n")),
                   zero_shot_accuracy=_number(zero.get("accuracy")), gold_accuracy=_number(gold.get("accuracy")))
    if all(isinstance(c.get("correct"), list) for c in (own, zero, gold)):
        gap = gap_recovered(zero["correct"], gold["correct"], own["correct"], seed=report.get("seed") or 0)
        columns.update(gap_recovered=gap["value"], gap_recovered_ci_low=gap["ci_low"], gap_recovered_ci_high=gap["ci_high"])
    return columns


def read_cell(sweep: Sweep, cell: Cell) -> CellResult:
    """What the cell's folder holds, as one row; a damaged file is named on stderr and its columns left empty."""
    where = sweep.cell_dir(cell)
    files = RunDirectory(where)
    settings = sweep.cell_config(cell).flat()
    row: dict[str, Any] = {name: None for name in CELL_COLUMNS}
    row.update(index=cell.index, cell=cell.name, state=cell_state(where), **{a: settings[a] for a in AXIS_COLUMNS})
    result = CellResult(cell, row)
    readers = [(files.labels_file, _read_labels), (files.summary_file, _read_summary), (files.eval_file, _read_eval),
               (files.log_file, _read_log)]
    for path, reader in readers:
        if not path.is_file():
            continue
        try:
            reader(path, result, where)
        except UserError as exc:
            print(f"warning: cell {cell.index} ({cell.name}): {exc}; its columns from {path.name} are left empty",
                  file=sys.stderr)
    return result


def _read_labels(path: Path, result: CellResult, where: Path) -> None:
    result.row.update(label_columns(read_json_lines(path, rewrite_advice(where), check=label_row_problem)))


def _read_summary(path: Path, result: CellResult, where: Path) -> None:
    summary = read_json_object(path, rewrite_advice(where))
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    converged = summary.get("converged")
    cost = summary.get("cost") if isinstance(summary.get("cost"), dict) else {}
    per_claim = cost.get("per_labelled_claim") if isinstance(cost.get("per_labelled_claim"), dict) else {}
    whole_run = cost.get("run") if isinstance(cost.get("run"), dict) else {}

    def run_total(name: str) -> Optional[float]:
        # The whole run's count (every invocation: the cost block's run totals); a summary written before the
        # block held it has only the top-level field, which was then the last invocation's.
        return _number(whole_run.get(name, summary.get(name)))

    result.row.update(
        final_energy=_number(final.get("energy")), inconsistent_num=_number(final.get("inconsistent_num")),
        iterations=_number(summary.get("iterations")), converged=converged if isinstance(converged, bool) else None,
        pool_scores_computed=run_total("pool_scores_computed"), pool_scores_reused=run_total("pool_scores_reused"),
        wall_seconds=run_total("wall_seconds"), stopped_early=summary.get("stopped_early") or None)
    result.row.update(requests_per_claim=_number(per_claim.get("requests")),
                      computed_tokens_per_claim=_number(per_claim.get("computed_prompt_tokens")),
                      dollars=_number(whole_run.get("dollars")))


def _read_eval(path: Path, result: CellResult, where: Path) -> None:
    again = f"python src/experiments/evaluate.py --run-dir {where}"
    report = read_json_object(path, f"evaluate it again: {again}")
    used = report.get("labels_used") if isinstance(report.get("labels_used"), dict) else {}
    labels = RunDirectory(where).labels_file
    now = hashlib.sha256(labels.read_bytes()).hexdigest() if labels.is_file() else None
    if used.get("sha256") is None or used["sha256"] != now:
        why = ("records no hash of the labels it evaluated" if used.get("sha256") is None
               else f"was made from other labels than its {labels.name} holds now (the cell ran on after it was evaluated)")
        print(f"warning: cell {result.cell.index} ({result.cell.name}): its {path.name} {why}; its test columns are "
              f"left empty. Evaluate it again: {again}", file=sys.stderr)
        return
    result.row.update(eval_columns(report))


def _read_log(path: Path, result: CellResult, where: Path) -> None:
    result.log = read_json_lines(path, rewrite_advice(where), cut_last_line_ok=True)
    drift = share_true_drift(where)
    if drift is not None:
        result.row.update(share_true_first=drift["first"], share_true_drift=drift["drift"])


def readable_cells(results: Sequence[CellResult], sweep: Sweep) -> list[Path]:
    """The folders of ``results`` whose files the no-gold signals read (labels.jsonl, summary.json, log.jsonl)
    can be read; a cell with a damaged one is named on stderr and left out, so it doesn't blank its seeds'."""
    readable = []
    for result in results:
        where = sweep.cell_dir(result.cell)
        try:
            run_signals(where)
        except UserError as exc:
            print(f"warning: cell {result.cell.index} ({result.cell.name}) is left out of its setting's seed signals: "
                  f"{exc}", file=sys.stderr)
            continue
        readable.append(where)
    return readable


def seed_signal_columns(run_dirs: Sequence[Path]) -> dict[str, Any]:
    """The no-gold signals of one setting's finished seeds: mean label agreement between them (up to the global
    flip, over the claims each pair shares), how many pairs were compared and how many agree flipped, and the mean
    final energy, remaining violations and share-of-True drift. Empty for fewer than two runs."""
    if len(run_dirs) < 2:
        return {}
    signals = seed_signals(run_dirs)
    agreement = signals["agreement"]

    def mean_of(name: str) -> Optional[float]:
        return signals[name]["mean"] if signals[name] else None

    return {"seed_agreement_mean": agreement["mean"],
            "seed_pairs_compared": sum(p["agreement"] is not None for p in agreement["pairs"]),
            "seed_pairs_flipped": agreement["flipped"], "final_energy_mean": mean_of("energy"),
            "inconsistent_num_mean": mean_of("inconsistent_num"), "share_true_drift_mean": mean_of("share_true_drift")}


def group_key(row: dict[str, Any]) -> tuple:
    return tuple(row[name] for name in GROUP_COLUMNS)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting (every axis but the seed), in the cells' order: how many cells and how many are done,
    and per metric of SUMMARY_METRICS the seeds that have it (done cells only), their mean and 95% t-interval."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_key(row), []).append(row)
    summary = []
    for key, members in groups.items():
        done = [r for r in members if r["state"] == "done"]
        out: dict[str, Any] = {**dict(zip(GROUP_COLUMNS, key)), "cells": len(members), "done": len(done)}
        for metric in SUMMARY_METRICS:
            values = [r[metric] for r in done if r[metric] is not None]
            interval = t_interval(values) or {}
            out.update({f"{metric}_n": len(values), f"{metric}_mean": interval.get("mean"),
                        f"{metric}_ci_low": interval.get("ci_low"), f"{metric}_ci_high": interval.get("ci_high")})
        summary.append(out)
    return summary


def csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """CSV with a header; None is an empty field."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buffer.getvalue()


def aggregate(sweep: Sweep) -> tuple[list[CellResult], list[dict[str, Any]]]:
    """Read every cell, write OUT/sweep.csv and OUT/sweep_summary.csv (atomically); return the cells and the
    summary rows."""
    results = [read_cell(sweep, cell) for cell in sweep.cells]
    rows = [r.row for r in results]
    summary = summarise(rows)
    for line in summary:
        done = readable_cells([r for r in results if r.row["state"] == "done" and group_key(r.row) == group_key(line)],
                              sweep)
        try:
            line.update(seed_signal_columns(done))
        except UserError as exc:
            print(f"warning: the seed signals of {', '.join(map(str, done))} can't be read: {exc}", file=sys.stderr)
    write_atomically(sweep.out / SWEEP_CSV, csv_text(CELL_COLUMNS, rows))
    write_atomically(sweep.out / SWEEP_SUMMARY_CSV, csv_text(SUMMARY_COLUMNS, summary))
    return results, summary
