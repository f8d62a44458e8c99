"""Comparing labellers across runs: from each run's eval.json to one table, one line per labeller, and the bars
of one Figure-1-style figure.

Pure functions over what evaluate.py recorded (no model, no files): each run's conditions with their per-item
correctness (1/0 in the order of its eval.json "test_items"), its settings and its pool-label accuracy.

- test accuracy: the run's own-labels condition, with its 95% percentile-bootstrap interval (evaluation.py);
- performance gap recovered: (acc − zero-shot) / (golden − zero-shot) on the run's own test items, with a 95%
  paired percentile-bootstrap interval: the test items are resampled jointly, so the three accuracies of a
  resample come from the same items. Undefined (None, with a reason) without gold labels or when golden equals
  zero-shot; its interval is undefined when that happens in a resample;
- per labeller (runs alike in testbed, model, labeller, α and true share, differing in seed): the mean over runs
  and a 95% Student-t interval across them (two runs or more);
- cost: each run's labelling cost per labelled claim (its summary.json's cost block: requests, prompt tokens,
  engine-computed tokens, wall seconds, dollars on the hosted API) beside its accuracy, and the evaluation's own
  (its eval.json's); per labeller, the mean over the runs that recorded one.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
LABELLER_ORDER = ("random", "bootstrap", "bootstrap-consistency", "icm")  # the figure's order: cheapest first
LABELLER_NAMES = {"icm": "ICM", "random": "random", "bootstrap": "bootstrap", "bootstrap-consistency": "bootstrap+consistency"}
ZERO_SHOT, GOLD = "zero-shot", "gold labels"
# What makes two runs the same experiment, bar the seed: the lines a labeller gets one of.
GROUP_KEYS = ("testbed", "model", "labeller", "alpha", "true_share")


def _gap_statistic(zero: np.ndarray, gold: np.ndarray, run: np.ndarray, axis: int = -1) -> np.ndarray:
    """(run − zero) / (gold − zero) over the test items on ``axis``; NaN where gold equals zero-shot."""
    zero_mean, gap = zero.mean(axis=axis), gold.mean(axis=axis) - zero.mean(axis=axis)
    recovered = run.mean(axis=axis) - zero_mean
    return np.divide(recovered, gap, out=np.full(np.shape(gap), np.nan), where=gap != 0)


def gap_recovered(zero: Sequence[int], gold: Sequence[int], run: Sequence[int], *, seed: int = 0,
                  resamples: int = RESAMPLES) -> dict[str, Any]:
    """The performance gap recovered by ``run`` between ``zero`` (zero-shot) and ``gold`` (golden labels), from
    their per-item correctness (1/0, the same test items in the same order), with a 95% paired percentile-
    bootstrap interval (scipy.stats.bootstrap, ``resamples`` resamples drawn by numpy's default_rng(seed)).

    Returns {"value", "ci_low", "ci_high", "reason"}: a fraction (1 = all of the gap, below 0 = worse than
    zero-shot, above 1 = better than golden); "reason" is None, or says why the value or interval is None.
    Raises ValueError if the three differ in length."""
    arrays = [np.asarray(values, dtype=float) for values in (zero, gold, run)]
    if len({len(a) for a in arrays}) != 1 or not len(arrays[0]):
        raise ValueError("gap_recovered needs the same test items, at least one, under every condition")
    if arrays[1].sum() == arrays[0].sum():  # counts, not float means: equal accuracies are exactly equal
        accuracy = 100 * arrays[0].mean()
        return {"value": None, "ci_low": None, "ci_high": None,
                "reason": f"golden and zero-shot accuracy are equal ({accuracy:.1f}%): there is no gap to recover"}
    value = float(_gap_statistic(*arrays))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns of degenerate resamples; they are counted below
        result = stats.bootstrap(tuple(arrays), _gap_statistic, paired=True, vectorized=True,
                                 confidence_level=CONFIDENCE, n_resamples=resamples, method="percentile",
                                 rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        undefined = int(np.isnan(result.bootstrap_distribution).sum())
        return {"value": value, "ci_low": None, "ci_high": None,
                "reason": f"golden equals zero-shot in {undefined} of {resamples} resamples of the test items: "
                          "too small a gap, or too few test items, for an interval"}
    return {"value": value, "ci_low": low, "ci_high": high, "reason": None}


def t_interval(values: Iterable[float]) -> Optional[dict[str, Any]]:
    """Mean of ``values`` (one per run) with a 95% Student-t interval, mean ± t(0.975, n−1)·s/√n; the
    interval is None for a single value. None when there are no values."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(data):
        return None
    mean = float(data.mean())
    if len(data) == 1:
        return {"mean": mean, "ci_low": None, "ci_high": None, "n": 1}
    sem = float(stats.sem(data))
    if sem == 0:  # every run gave the same value; scipy's interval at scale 0 is NaN
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": len(data)}
    low, high = stats.t.interval(CONFIDENCE, len(data) - 1, loc=mean, scale=sem)
    return {"mean": mean, "ci_low": float(low), "ci_high": float(high), "n": len(data)}


def pool_label_accuracy(rows: Sequence[dict]) -> Optional[dict[str, Any]]:
    """The share of labelled claims (labels.jsonl rows) whose label equals their gold label, over those with
    both: {"accuracy", "n"}; None when no labelled claim has a gold label. Not corrected for ICM's global flip
    (a labelling and its negation are equally coherent): 0.1 here is a labelling that is 90% right upside down."""
    pairs = [(bool(r["label"]), bool(r["gold_label"])) for r in rows
             if r.get("label") is not None and r.get("gold_label") is not None]
    if not pairs:
        return None
    return {"accuracy": sum(label == gold for label, gold in pairs) / len(pairs), "n": len(pairs)}


def _interval(condition: Optional[dict]) -> Optional[dict[str, Any]]:
    if condition is None:
        return None
    return {key: condition[key] for key in ("accuracy", "ci_low", "ci_high", "n")}


# The labelling cost comparison.json gives per run, from summary.json's cost block.
COST_FIELDS = ("requests", "prompt_tokens", "computed_prompt_tokens", "wall_seconds", "dollars")


def labelling_cost(summary: Optional[dict]) -> Optional[dict[str, Any]]:
    """A run's labelling cost from its summary.json: its route, the totals over every invocation and the same per
    labelled claim, whether the totals count from the run's start, and the dollars' note. None for a run whose
    summary.json records no cost (one written before the accounting existed, or none at all)."""
    cost = summary.get("cost") if isinstance(summary, dict) else None
    if not isinstance(cost, dict) or not isinstance(cost.get("run"), dict):
        return None
    per_claim = cost.get("per_labelled_claim") if isinstance(cost.get("per_labelled_claim"), dict) else None
    return {
        "route": summary.get("route"), "labelled_claims": cost.get("labelled_claims"),
        "run": {name: cost["run"].get(name) for name in COST_FIELDS},
        "per_labelled_claim": None if per_claim is None else {name: per_claim.get(name) for name in COST_FIELDS},
        "counted_from_start": cost.get("counted_from_start"), "dollars_note": cost.get("dollars_note"),
    }


def evaluation_cost(report: dict) -> Optional[dict[str, Any]]:
    """What the evaluation's own scoring cost (eval.json's cost block), None for an eval.json made before it."""
    cost = report.get("cost")
    if not isinstance(cost, dict) or not isinstance(cost.get("evaluation"), dict):
        return None
    return {"evaluation": {name: cost["evaluation"].get(name) for name in COST_FIELDS},
            "per_test_claim": cost.get("per_test_claim"), "test_claims": cost.get("test_claims")}


def _mean_cost(members: Sequence[dict]) -> Optional[dict[str, Any]]:
    """The mean per-labelled-claim cost over the runs of ``members`` that recorded one; dollars over those with
    dollars. None when none did."""
    known = [m["labelling_cost"]["per_labelled_claim"] for m in members
             if m.get("labelling_cost") and m["labelling_cost"]["per_labelled_claim"]]
    if not known:
        return None
    means: dict[str, Any] = {"runs": len(known)}
    for name in COST_FIELDS:
        values = [k[name] for k in known if isinstance(k.get(name), (int, float))]
        means[name] = float(np.mean(values)) if values else None
    return means


def run_entry(run_dir: str, settings: dict, report: dict, *, reused: bool, resamples: int = RESAMPLES,
              summary: Optional[dict] = None) -> dict[str, Any]:
    """One run's line of comparison.json, from its recorded ``settings``, its eval.json ``report`` and its
    ``summary`` (summary.json, for its labelling cost; None: unknown)."""
    conditions = report["conditions"]
    own = conditions[report["run_condition"]]
    gold = conditions.get(GOLD)
    if gold is None:
        gap = {"value": None, "ci_low": None, "ci_high": None,
               "reason": "no gold labels for the demonstrations, so no golden condition"}
    else:
        gap = gap_recovered(conditions[ZERO_SHOT]["correct"], gold["correct"], own["correct"],
                            seed=report["seed"], resamples=resamples)
    return {
        "run_dir": run_dir, "testbed": report["testbed"], "model": report["model"],
        "labeller": settings.get("labeller") or "icm", "seed": settings.get("seed"),
        "pool_seed": settings.get("pool_seed"), "alpha": settings.get("alpha"), "true_share": settings.get("true_share"),
        "condition": report["run_condition"], "n_test": report["n_test"], "eval_reused": reused,
        "test_accuracy": _interval(own), "zero_shot": _interval(conditions[ZERO_SHOT]), "golden": _interval(gold),
        "gap_recovered": gap, "pool_label_accuracy": report.get("pool_label_accuracy"),
        "labelling_cost": labelling_cost(summary), "evaluation_cost": evaluation_cost(report),
    }


def _group_key(run: dict) -> tuple:
    return tuple(run[key] for key in GROUP_KEYS)


def _labeller_rank(labeller: str) -> int:
    return LABELLER_ORDER.index(labeller) if labeller in LABELLER_ORDER else len(LABELLER_ORDER)


def group_entries(runs: Sequence[dict]) -> list[dict[str, Any]]:
    """One line per labeller: runs alike in GROUP_KEYS, with the mean and 95% t-interval across them of test
    accuracy, gap recovered (over the runs where it is defined) and pool-label accuracy."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(_group_key(run), []).append(run)
    lines = []
    for key, members in sorted(groups.items(), key=lambda item: (str(item[0][:2]), _labeller_rank(item[0][2]), str(item[0][3:]))):
        gaps = [m["gap_recovered"]["value"] for m in members]
        pool = [m["pool_label_accuracy"]["accuracy"] for m in members if m["pool_label_accuracy"]]
        lines.append({
            **dict(zip(GROUP_KEYS, key)), "runs": len(members), "seeds": [m["seed"] for m in members],
            "test_accuracy": t_interval(m["test_accuracy"]["accuracy"] for m in members),
            "gap_recovered": t_interval(gaps), "gap_recovered_undefined_runs": sum(g is None for g in gaps),
            "pool_label_accuracy": t_interval(pool),
            "cost_per_labelled_claim": _mean_cost(members),
        })
    return lines


def _settings_label(line: dict) -> str:
    alpha = "" if line["alpha"] is None else f"α={line['alpha']:g}"
    share = "" if line["true_share"] is None else f"true {line['true_share']:g}"
    return ", ".join(part for part in (alpha, share) if part)


def _bar(name: str, kind: str, values: Sequence[dict]) -> dict[str, Any]:
    """A bar over ``values`` (condition intervals of distinct runs): one run's bootstrap interval, or the mean
    and t-interval across several."""
    if len(values) == 1:
        only = values[0]
        return {"bar": name, "kind": kind, "mean": only["accuracy"], "ci_low": only["ci_low"],
                "ci_high": only["ci_high"], "runs": 1, "interval": "bootstrap over test items"}
    across = t_interval(v["accuracy"] for v in values)
    return {"bar": name, "kind": kind, "mean": across["mean"], "ci_low": across["ci_low"], "ci_high": across["ci_high"],
            "runs": len(values), "interval": "t across runs"}


def _distinct(reports: Sequence[dict], condition: str) -> list[dict]:
    """``condition`` of each report, once per distinct result: runs scored on the same test items with the same
    demonstrations repeat one measurement (zero-shot above all), which is not a second sample."""
    seen: dict[tuple, dict] = {}
    for report in reports:
        result = report["conditions"].get(condition)
        if result is not None:
            seen.setdefault((tuple(report["test_items"]), tuple(result["correct"])), result)
    return list(seen.values())


def figure_panels(runs: Sequence[dict], reports: Sequence[dict]) -> list[dict[str, Any]]:
    """The figure's panels, one per testbed and model, each with its bars in the paper's order: zero-shot, each
    labeller (cheapest first; one bar per line of group_entries), golden labels."""
    panels: dict[tuple, list[int]] = {}
    for index, run in enumerate(runs):
        panels.setdefault((run["testbed"], run["model"]), []).append(index)
    drawn = []
    for (testbed, model), indices in panels.items():
        members = [runs[i] for i in indices]
        bars = [_bar("zero-shot", "zero-shot", _distinct([reports[i] for i in indices], ZERO_SHOT))]
        lines = group_entries(members)
        labellers = [line["labeller"] for line in lines]
        for line in lines:
            name = LABELLER_NAMES.get(line["labeller"], line["labeller"])
            if labellers.count(line["labeller"]) > 1:  # several settings of one labeller: say which bar is which
                name += "\n" + _settings_label(line)
            alike = [m["test_accuracy"] for m in members if _group_key(m) == tuple(line[k] for k in GROUP_KEYS)]
            bars.append(_bar(name, line["labeller"], alike))
        gold = _distinct([reports[i] for i in indices], GOLD)
        if gold:
            bars.append(_bar("golden labels", "gold", gold))
        drawn.append({"testbed": testbed, "model": model, "bars": bars})
    return drawn


def comparison_report(evaluated: Sequence[tuple[str, dict, dict, bool]], *, resamples: int = RESAMPLES,
                      summaries: Optional[Sequence[Optional[dict]]] = None) -> dict[str, Any]:
    """comparison.json: ``evaluated`` holds (run directory, its recorded settings, its eval.json, whether that
    was reused) per run, in the order given; ``summaries`` each run's summary.json (None: not known)."""
    summaries = list(summaries) if summaries is not None else [None] * len(evaluated)
    runs = [run_entry(run_dir, settings, report, reused=reused, resamples=resamples, summary=summary)
            for (run_dir, settings, report, reused), summary in zip(evaluated, summaries)]
    return {
        "confidence": CONFIDENCE, "resamples": resamples,
        "intervals": {"test_accuracy": "percentile bootstrap over the run's test items (its eval.json)",
                      "gap_recovered": "paired percentile bootstrap over the run's test items",
                      "across_runs": "Student t over the runs of a line (mean ± t·s/√n), none for one run"},
        "cost": {"labelling_cost": "the run's summary.json: every invocation of the run, and per labelled claim",
                 "evaluation_cost": "the evaluation's own scoring (its eval.json), and per test claim",
                 "cost_per_labelled_claim": "per labeller: the mean over its runs that recorded a cost"},
        "runs": runs,
        "labellers": group_entries(runs),
        "figure": figure_panels(runs, [report for _, _, report, _ in evaluated]),
    }


def _percent(value: Optional[float]) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def _span(low: Optional[float], high: Optional[float]) -> str:
    return "" if low is None or high is None else f" [{100 * low:.1f}, {100 * high:.1f}]"


def _short_names(run_dirs: Sequence[str]) -> list[str]:
    """The run directories relative to the folder they share (a sweep's cells by their own names)."""
    if len(run_dirs) < 2:
        return [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
    common = os.path.commonpath([os.path.abspath(d) for d in run_dirs])
    return [os.path.relpath(os.path.abspath(d), common) for d in run_dirs]


def _per_claim(run: dict, name: str, form: str) -> str:
    """One figure of a run's labelling cost per labelled claim, formatted; "-" where it is unknown."""
    per_claim = (run.get("labelling_cost") or {}).get("per_labelled_claim") or {}
    value = per_claim.get(name)
    return "-" if value is None else form.format(value)


def _mean_per_claim(line: dict, name: str, form: str) -> str:
    value = (line.get("cost_per_labelled_claim") or {}).get(name)
    return "-" if value is None else form.format(value)


def comparison_table(comparison: dict) -> str:
    """comparison.json as text: one line per run, then one per labeller."""
    names = _short_names([run["run_dir"] for run in comparison["runs"]])
    width = max(len("run"), *map(len, names))
    lines = [f"{'run':{width}s} labeller               seed      test accuracy          gap recovered          pool vs gold"
             "  engine tokens/claim  $/claim"]
    for run, name in zip(comparison["runs"], names):
        test, gap, pool = run["test_accuracy"], run["gap_recovered"], run["pool_label_accuracy"]
        lines.append(f"{name:{width}s} {run['labeller']:22s} {str(run['seed']):9s} "
                     f"{_percent(test['accuracy'])}{_span(test['ci_low'], test['ci_high']):16s} "
                     f"{_percent(gap['value'])}{_span(gap['ci_low'], gap['ci_high']):16s} "
                     f"{_percent(pool['accuracy'] if pool else None)}        {_per_claim(run, 'computed_prompt_tokens', '{:,.0f}'):>13s}"
                     f"  {_per_claim(run, 'dollars', '{:.6f}')}")
    lines.append("labeller (mean over runs, 95% t-interval)")
    for line in comparison["labellers"]:
        test, gap, pool = line["test_accuracy"], line["gap_recovered"], line["pool_label_accuracy"]
        lines.append(f"  {line['testbed']:10s} {line['labeller']:22s} runs={line['runs']:<3d} "
                     f"test {_percent(test['mean'])}{_span(test['ci_low'], test['ci_high'])}  "
                     f"gap {_percent(gap['mean'] if gap else None)}{_span(gap['ci_low'], gap['ci_high']) if gap else ''}  "
                     f"pool {_percent(pool['mean'] if pool else None)}  engine tokens/claim "
                     f"{_mean_per_claim(line, 'computed_prompt_tokens', '{:,.0f}')}  $/claim {_mean_per_claim(line, 'dollars', '{:.6f}')}")
    return "\n".join(lines)
