"""The project's figures: test accuracy per condition and per labeller (the paper's Figure 1 style) and search
progress."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

CONDITION_COLOURS = {"zero-shot": "#9e9e9e", "random labels": "#c9a227", "gold labels": "#e8a33d", "ICM labels": "#3b6fb6",
                     "random-labeller labels": "#d8c27a", "bootstrap labels": "#7fb07f",
                     "bootstrap-consistency labels": "#3d8c5a"}
# comparison_figure's bars, by kind: the baselines and golden as in eval.png, each labeller its own colour.
BAR_COLOURS = {"zero-shot": "#9e9e9e", "random": "#d8c27a", "bootstrap": "#7fb07f", "bootstrap-consistency": "#3d8c5a",
               "icm": "#3b6fb6", "gold": "#e8a33d"}


def figure_formats() -> set[str]:
    """The file name endings (without the dot) matplotlib can save a figure as: png, pdf, svg, ..."""
    return set(Figure().canvas.get_supported_filetypes())


def accuracy_figure(results: dict[str, dict], title: str, majority_rate: float) -> Figure:
    """Bars of test accuracy per condition with their 95% intervals (``results``: eval.json's conditions,
    fractions in [0, 1]), and a dashed line at ``majority_rate``: what always answering the commoner test
    label scores, the bar a labelling must clear on an unbalanced test set (50% chance would flatter it)."""
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
    axes.axhline(100 * majority_rate, linestyle="--", color="black", linewidth=1,
                 label=f"majority class ({100 * majority_rate:.1f}%)")
    axes.set_ylim(0, 100)
    axes.set_ylabel("Test accuracy (%)")
    axes.set_xlabel("Many-shot demonstrations labelled by")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper left", fontsize=8, frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return figure


def accuracy_chart(results: dict[str, dict], title: str, majority_rate: float, path: Path) -> None:
    """accuracy_figure, saved to ``path`` (PNG)."""
    _save(accuracy_figure(results, title, majority_rate), path)


def comparison_figure(panels: Sequence[dict], title: str) -> Figure:
    """Test accuracy of zero-shot, each labeller and golden labels, side by side with their 95% intervals, one
    panel per testbed and model (``panels``: comparison.json's "figure", fractions in [0, 1]). A bar over one
    run carries that run's bootstrap interval over test items; over several, the t-interval across runs, and the
    number of runs is written under it."""
    figure, axes_list = plt.subplots(1, len(panels), figsize=(1.2 + 1.25 * max(len(p["bars"]) for p in panels) * len(panels), 4.6),
                                     dpi=150, squeeze=False, sharey=True)
    for axes, panel in zip(axes_list[0], panels):
        bars = panel["bars"]
        mean = [100 * b["mean"] for b in bars]
        below = [0 if b["ci_low"] is None else 100 * (b["mean"] - b["ci_low"]) for b in bars]
        above = [0 if b["ci_high"] is None else 100 * (b["ci_high"] - b["mean"]) for b in bars]
        drawn = axes.bar(range(len(bars)), mean, yerr=[below, above], capsize=5, edgecolor="black", linewidth=0.6,
                         color=[BAR_COLOURS.get(b["kind"], "#777777") for b in bars])
        for bar, value, spec in zip(drawn, mean, bars):
            axes.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, 1.5), ha="center", va="bottom",
                          fontsize=8, color="white", fontweight="bold")
            if spec["runs"] > 1:
                axes.annotate(f"n={spec['runs']}", (bar.get_x() + bar.get_width() / 2, 8), ha="center", va="bottom",
                              fontsize=7, color="white")
        axes.set_xticks(range(len(bars)), [b["bar"] for b in bars], rotation=30, ha="right", fontsize=8)
        axes.set_ylim(0, 100)
        axes.set_title(f"{panel['testbed']} · {panel['model']}", fontsize=9)
        axes.spines[["top", "right"]].set_visible(False)
    axes_list[0][0].set_ylabel("Test accuracy (%)")
    figure.suptitle(textwrap.fill(title, 90), fontsize=10)
    figure.text(0.01, 0.01, "95% intervals: one run, bootstrap over test items; n runs, t across runs", fontsize=7,
                color="#444444")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def comparison_chart(panels: Sequence[dict], title: str, path: Path) -> None:
    """comparison_figure, saved to ``path`` (PNG)."""
    _save(comparison_figure(panels, title), path)


@dataclass(frozen=True)
class RunLog:
    """One run's log.jsonl records, with the name (its directory's) and --seed that label it in a figure."""
    name: str
    seed: Optional[int]
    log: list[dict]
    labeller: Optional[str] = None  # who labelled the run (its settings' labeller); None: not recorded, ICM

    @property
    def label(self) -> str:
        return self.name if self.seed is None else f"{self.name} (--seed {self.seed})"


NO_GOLD = "no gold labels"
# A series of at most this many points is drawn with a marker on each: a baseline's few rounds (the random
# labeller's one) would otherwise be a line too short to see, or nothing at all.
MARKER_MAX_POINTS = 30


def point_style(points: int) -> dict:
    """Line options for a series of ``points`` points: markers when there are few of them."""
    return {"marker": "o", "markersize": 4} if points <= MARKER_MAX_POINTS else {}


def progress_title(runs: Sequence[RunLog]) -> str:
    """"ICM search progress" when every run is ICM's; otherwise the labellers', named."""
    labellers = list(dict.fromkeys(run.labeller or "icm" for run in runs))
    if labellers == ["icm"]:
        return "ICM search progress"
    return f"Labelling progress ({', '.join(labellers)})"
GROWING_SET_NOTE = "over the claims labelled so far: the set grows as the search labels more"


def progress_figure(runs: Sequence[RunLog]) -> Figure:
    """Energy, agreement with gold and inconsistent pairs per iteration; one line per run."""
    figure, (energy, agreement, inconsistent) = plt.subplots(3, 1, figsize=(7, 7.5), dpi=150, sharex=True)
    no_gold: list[str] = []
    agreement_values: list[float] = []
    for run in runs:
        iterations = [r["iter"] for r in run.log]
        style = {"label": run.label, "linewidth": 1.2, **point_style(len(iterations))}
        energy.plot(iterations, [_value(r.get("energy")) for r in run.log], **style)
        gold = [_value(r.get("train_accuracy"), 100) for r in run.log]
        if all(math.isnan(v) for v in gold):
            no_gold.append(run.label)
            agreement.plot([], [])  # keeps each run's colour the same in every panel
        else:
            agreement.plot(iterations, gold, **style)
            agreement_values.extend(gold)
        inconsistent.plot(iterations, [_value(r.get("inconsistent_num")) for r in run.log], **style)
    energy.set_ylabel("Energy U(D)")
    agreement.set_ylabel("Agreement with gold (%)")
    agreement.set_title(GROWING_SET_NOTE, fontsize=8, loc="left", color="#444444")
    if len(no_gold) == len(runs):
        agreement.set_yticks([])
        agreement.text(0.5, 0.5, NO_GOLD, transform=agreement.transAxes, ha="center", va="center", color="#666666")
    else:
        _percent_axis(agreement, agreement_values)
        if no_gold:
            agreement.text(0.99, 0.97, f"{NO_GOLD}: {', '.join(no_gold)}", transform=agreement.transAxes, fontsize=7,
                           ha="right", va="top", color="#666666")
    _count_axis(inconsistent, [r.get("inconsistent_num") for run in runs for r in run.log])
    inconsistent.set_ylabel("Inconsistent pairs")
    inconsistent.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole; sharex carries it up
    inconsistent.set_xlabel("Iteration")
    energy.legend(fontsize=8, frameon=False)
    for axis in (energy, agreement, inconsistent):
        axis.grid(alpha=0.3)
        axis.spines[["top", "right"]].set_visible(False)
    figure.suptitle(textwrap.fill(f"{progress_title(runs)}: " + ", ".join(run.label for run in runs), 90), fontsize=11)
    figure.tight_layout()
    return figure


def progress_chart(runs: Sequence[RunLog], path: Path) -> None:
    """progress_figure, saved to ``path`` (PNG)."""
    _save(progress_figure(runs), path)


def _value(value: Optional[float], scale: float = 1) -> float:
    return float("nan") if value is None else scale * value


MIN_PERCENT_SPAN = 10.0


def _percent_axis(axis: Axes, values: Sequence[float]) -> None:
    """At least MIN_PERCENT_SPAN points of range within 0-100, so agreement that never moved reads as a flat
    line at its value rather than noise on a ±0.04% axis."""
    finite = [v for v in values if not math.isnan(v)]
    low, high = min(finite), max(finite)
    if high - low >= MIN_PERCENT_SPAN:
        return
    low = max(0.0, (low + high - MIN_PERCENT_SPAN) / 2)
    high = min(100.0, low + MIN_PERCENT_SPAN)
    axis.set_ylim(high - MIN_PERCENT_SPAN - 1, high + 1)


def _count_axis(axis: Axes, counts: Sequence[Optional[int]]) -> None:
    """Whole-number ticks, and room below 0 and above the largest count, so a line at 0 is seen, not hidden
    in the axis."""
    top = max([1, *(c for c in counts if c is not None)])
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylim(-0.08 * top, 1.12 * top)


def _save(figure: Figure, path: Path) -> None:
    try:
        figure.savefig(path)
    finally:
        plt.close(figure)
