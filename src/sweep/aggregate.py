"""A sweep's results in two tables: OUT/sweep.csv (one row per cell) and OUT/sweep_summary.csv (the cells of one
setting grouped over their seeds: mean and 95% t-interval).

Everything is read from the cells' own files, what each has: labels.jsonl (pool-label accuracy against gold),
summary.json (the run's end), eval.json (test accuracy, written by evaluate.py). A column whose file a cell
lacks is left empty.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from scipy import stats

from core.errors import UserError
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
    "test_accuracy", "test_ci_low", "test_ci_high", "n_test", "zero_shot_accuracy", "gold_accuracy",
    "gap_recovered", "gap_recovered_ci_low", "gap_recovered_ci_high",
]
# What sweep_summary.csv gives a mean and interval of, over the seeds of one setting.
SUMMARY_METRICS = ("pool_label_accuracy", "test_accuracy", "gap_recovered")
GROUP_COLUMNS = [name for name in AXIS_COLUMNS if name != "seed"]
SUMMARY_COLUMNS = [*GROUP_COLUMNS, "cells", "done",
                   *(f"{metric}_{part}" for metric in SUMMARY_METRICS for part in ("n", "mean", "ci_low", "ci_high"))]
CONFIDENCE = 0.95
# eval.json's condition for the run's own labels: evaluate.py names it "ICM labels" (other labellers may get
# their own name); the baselines beside it are these.
BASELINE_CONDITIONS = ("zero-shot", "random labels", "gold labels")


@dataclass
class CellResult:
    cell: Cell
    row: dict[str, Any]  # CELL_COLUMNS -> value (None: not known)
    log: list[dict] = field(default_factory=list)  # log.jsonl's records, for the figure


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def pool_label_accuracy(rows: Sequence[dict]) -> tuple[Optional[float], int, Optional[float], int]:
    """From labels.jsonl's rows: the share of labelled claims with a gold label whose label equals it, and how
    many those are; the share of labelled claims labelled True, and how many are labelled."""
    labelled = [r for r in rows if r.get("label") is not None]
    with_gold = [r for r in labelled if r.get("gold_label") is not None]
    accuracy = sum(bool(r["label"]) == bool(r["gold_label"]) for r in with_gold) / len(with_gold) if with_gold else None
    share_true = sum(bool(r["label"]) for r in labelled) / len(labelled) if labelled else None
    return accuracy, len(with_gold), share_true, len(labelled)


def run_condition(conditions: dict) -> Optional[dict]:
    """eval.json's result for the run's own labels: "ICM labels", else the one condition that is no baseline."""
    if isinstance(conditions.get("ICM labels"), dict):
        return conditions["ICM labels"]
    own = [v for k, v in conditions.items() if k not in BASELINE_CONDITIONS and isinstance(v, dict)]
    return own[0] if len(own) == 1 else None


def gap_recovered(accuracy: Optional[float], zero_shot: Optional[float], gold: Optional[float]) -> Optional[float]:
    """(accuracy - zero-shot) / (gold - zero-shot): the share of the zero-shot to golden many-shot gap the labels
    recover (1: as good as gold; 0: no better than no demonstrations). None when a term is missing or the gap is 0."""
    if accuracy is None or zero_shot is None or gold is None or gold == zero_shot:
        return None
    return (accuracy - zero_shot) / (gold - zero_shot)


def eval_columns(report: dict) -> dict[str, Any]:
    """The test-set columns of a cell from its eval.json. A per-run "gap_recovered" field (a number, or an object
    with value/ci_low/ci_high) is taken as written; otherwise the gap is computed from the conditions."""
    conditions = report.get("conditions") if isinstance(report.get("conditions"), dict) else {}
    own = run_condition(conditions) or {}
    accuracy = _number(own.get("accuracy"))
    zero = _number((conditions.get("zero-shot") or {}).get("accuracy"))
    gold = _number((conditions.get("gold labels") or {}).get("accuracy"))
    columns = {"test_accuracy": accuracy, "test_ci_low": _number(own.get("ci_low")),
               "test_ci_high": _number(own.get("ci_high")), "n_test": _number(own.get("n")),
               "zero_shot_accuracy": zero, "gold_accuracy": gold,
               "gap_recovered": gap_recovered(accuracy, zero, gold)}
    written = report.get("gap_recovered", own.get("gap_recovered"))
    if isinstance(written, dict):
        columns.update(gap_recovered=_number(written.get("value", written.get("estimate"))),
                       gap_recovered_ci_low=_number(written.get("ci_low")),
                       gap_recovered_ci_high=_number(written.get("ci_high")))
    elif _number(written) is not None:
        columns["gap_recovered"] = written
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
    rows = read_json_lines(path, rewrite_advice(where), check=label_row_problem)
    accuracy, gold_n, share_true, labelled = pool_label_accuracy(rows)
    result.row.update(pool_size=len(rows), labelled=labelled, gold_labelled=gold_n, pool_label_accuracy=accuracy,
                      share_true=share_true)


def _read_summary(path: Path, result: CellResult, where: Path) -> None:
    summary = read_json_object(path, rewrite_advice(where))
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    converged = summary.get("converged")
    result.row.update(
        final_energy=_number(final.get("energy")), inconsistent_num=_number(final.get("inconsistent_num")),
        iterations=_number(summary.get("iterations")), converged=converged if isinstance(converged, bool) else None,
        pool_scores_computed=_number(summary.get("pool_scores_computed")),
        pool_scores_reused=_number(summary.get("pool_scores_reused")),
        wall_seconds=_number(summary.get("wall_seconds")), stopped_early=summary.get("stopped_early") or None)


def _read_eval(path: Path, result: CellResult, where: Path) -> None:
    report = read_json_object(path, f"evaluate it again: python src/experiments/evaluate.py --run-dir {where}")
    result.row.update(eval_columns(report))


def _read_log(path: Path, result: CellResult, where: Path) -> None:
    result.log = read_json_lines(path, rewrite_advice(where), cut_last_line_ok=True)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """Mean and two-sided ``confidence`` Student-t interval of the mean: mean ± t(n-1) · s/√n (scipy.stats.t).
    (None, None, None) for no value; the interval is None for one value (no spread to estimate), and the mean
    itself when all values are equal."""
    n = len(values)
    if n == 0:
        return None, None, None
    mean = statistics.fmean(values)
    if n == 1:
        return mean, None, None
    sem = statistics.stdev(values) / math.sqrt(n)
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


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
            mean, low, high = t_interval(values)
            out.update({f"{metric}_n": len(values), f"{metric}_mean": mean, f"{metric}_ci_low": low,
                        f"{metric}_ci_high": high})
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
    write_atomically(sweep.out / SWEEP_CSV, csv_text(CELL_COLUMNS, rows))
    write_atomically(sweep.out / SWEEP_SUMMARY_CSV, csv_text(SUMMARY_COLUMNS, summary))
    return results, summary
