"""OUT/sweep.png: per setting, the mean over seeds with its 95% t-interval (pool-label accuracy, test accuracy,
gap recovered), each seed a dot; below, pool-label accuracy over iterations for every cell (log.jsonl)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from src.evaluation import figures  # (also sets matplotlib's file-only backend before pyplot loads)
import matplotlib.pyplot as plt  # noqa: E402

from src.sweep.aggregate import GROUP_COLUMNS, SUMMARY_METRICS, CellResult, group_key
from src.sweep.grid import format_value

TITLES = {"pool_label_accuracy": "Pool-label accuracy vs gold", "test_accuracy": "Test accuracy",
          "gap_recovered": "Gap recovered"}


def group_label(row: dict[str, Any], varying: Sequence[str]) -> str:
    return ", ".join(f"{name}={format_value(row[name])}" for name in varying) or "all cells"


def sweep_figure(results: Sequence[CellResult], summary: Sequence[dict[str, Any]], path: Path) -> None:
    """The figure of the module's docstring, saved to ``path``."""
    varying = [name for name in GROUP_COLUMNS if len({row[name] for row in summary}) > 1]
    labels = [group_label(row, varying) for row in summary]
    keys = [tuple(row[name] for name in GROUP_COLUMNS) for row in summary]
    figure = plt.figure(figsize=(12, 8), dpi=120)
    grid = figure.add_gridspec(2, len(SUMMARY_METRICS), height_ratios=(1, 1.1))
    for column, metric in enumerate(SUMMARY_METRICS):
        axis = figure.add_subplot(grid[0, column])
        for x, (row, key) in enumerate(zip(summary, keys)):
            seeds = [r.row[metric] for r in results if group_key(r.row) == key and r.row["state"] == "done"
                     and r.row[metric] is not None]
            axis.scatter([x] * len(seeds), seeds, color="#9e9e9e", s=12, zorder=2)
            mean, low, high = row[f"{metric}_mean"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
            if mean is None:
                continue
            error = [[mean - low], [high - mean]] if low is not None else None
            axis.errorbar([x], [mean], yerr=error, fmt="o", color="#3b6fb6", capsize=5, zorder=3)
        if all(row[f"{metric}_mean"] is None for row in summary):
            note = "no eval.json in any cell\n(run evaluate.py)" if metric != "pool_label_accuracy" else "no gold labels"
            axis.text(0.5, 0.5, note, transform=axis.transAxes, ha="center", va="center", color="#666666")
            axis.set_yticks([])
        axis.set_xlim(-0.5, len(labels) - 0.5)
        axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        axis.set_title(TITLES[metric], fontsize=10)
        axis.grid(alpha=0.3, axis="y")
        axis.spines[["top", "right"]].set_visible(False)
    curves = figure.add_subplot(grid[1, :])
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for result in results:
        points = [(r["iter"], r["train_accuracy"]) for r in result.log
                  if isinstance(r.get("iter"), int) and isinstance(r.get("train_accuracy"), (int, float))]
        if not points:
            continue
        colour = colours[keys.index(group_key(result.row)) % len(colours)]
        curves.plot(*zip(*points), color=colour, linewidth=1, alpha=0.8, **figures.point_style(len(points)),
                    label=f"{group_label(result.row, varying)}, seed={result.row['seed']}")
    curves.set_xlabel("Iteration")
    curves.set_ylabel("Pool-label accuracy vs gold\n(claims labelled so far)")
    curves.grid(alpha=0.3)
    curves.spines[["top", "right"]].set_visible(False)
    if curves.lines:
        curves.legend(fontsize=6, frameon=False, ncol=2 if len(curves.lines) > 8 else 1)
    else:
        curves.text(0.5, 0.5, "no log.jsonl with gold accuracy", transform=curves.transAxes, ha="center", color="#666666")
    figure.suptitle(f"Sweep: mean over seeds with {95}% t-interval (dots: seeds)", fontsize=11)
    figure.tight_layout()
    try:
        figure.savefig(path)
    finally:
        plt.close(figure)
