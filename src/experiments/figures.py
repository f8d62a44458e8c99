"""The project's figures: test accuracy per condition (the paper's Figure 1 style) and search progress."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

CONDITION_COLOURS = {"zero-shot": "#9e9e9e", "random labels": "#c9a227", "gold labels": "#e8a33d", "ICM labels": "#3b6fb6"}


def accuracy_chart(results: dict[str, dict], title: str, chance: float, path: Path) -> None:
    names = list(results)
    accuracy = [100 * results[n]["accuracy"] for n in names]
    below = [100 * (results[n]["accuracy"] - results[n]["ci_low"]) for n in names]
    above = [100 * (results[n]["ci_high"] - results[n]["accuracy"]) for n in names]
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    bars = axes.bar(names, accuracy, yerr=[below, above], capsize=5,
                    color=[CONDITION_COLOURS.get(n, "#777777") for n in names], edgecolor="black", linewidth=0.6)
    for bar, value in zip(bars, accuracy):
        axes.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, 1.5), ha="center", va="bottom",
                      fontsize=9, color="white", fontweight="bold")
    axes.axhline(100 * chance, linestyle="--", color="black", linewidth=1, label=f"chance ({100 * chance:.0f}%)")
    axes.set_ylim(0, 100)
    axes.set_ylabel("Test accuracy (%)")
    axes.set_xlabel("Many-shot demonstrations labelled by")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper left", fontsize=8, frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def progress_chart(runs: Sequence[tuple[str, list[dict]]], path: Path) -> None:
    """Energy, agreement with gold and inconsistent pairs per iteration; one line per run."""
    panels = [("energy", "Energy U(D)", 1), ("train_accuracy", "Agreement with gold (%)", 100),
              ("inconsistent_num", "Inconsistent pairs", 1)]
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 7.5), dpi=150, sharex=True)
    for name, log in runs:
        iterations = [r["iter"] for r in log]
        for axis, (field, label, scale) in zip(axes, panels):
            values = [None if r.get(field) is None else scale * r[field] for r in log]
            axis.plot(iterations, [float("nan") if v is None else v for v in values], label=name, linewidth=1.2)
            axis.set_ylabel(label)
    axes[-1].yaxis.set_major_locator(MaxNLocator(integer=True))  # a count of pairs
    axes[-1].set_ylim(bottom=0)
    axes[-1].set_xlabel("Iteration")
    axes[0].legend(fontsize=8, frameon=False)
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.spines[["top", "right"]].set_visible(False)
    figure.suptitle("ICM search progress", fontsize=11)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
