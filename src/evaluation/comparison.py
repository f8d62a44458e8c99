"""Comparing labellers across runs: from each run's eval.json to one table, one line per labeller, and the bars
of one Figure-1-style figure.

Pure functions over what evaluate.py recorded (no model, no files): each run's conditions with their per-item
correctness (1/0 in the order of its eval.json "test_items"), its settings and its pool-label accuracy.

- test accuracy: the run's own-labels condition, with its 95% percentile-bootstrap interval (evaluation.py);
- performance gap recovered: (acc − zero-shot) / (golden − zero-shot) on the run's own test items, with a 95%
  paired percentile-bootstrap interval: the test items are resampled jointly, so the three accuracies of a
  resample come from the same items. Undefined (None, with a reason) without gold labels or when golden does
  not beat zero-shot (the ratio then has no meaning: a run at zero-shot's accuracy would "recover" 0% or 100%
  depending on which side golden fell); its interval is undefined when that happens in a resample;
- per labeller and setting (runs alike in testbed, model and every recorded setting that changes results, differing
  in seed; result_settings): the mean over runs and a 95% Student-t interval across them (two runs or more, each
  seed once: a repeated seed is not an independent sample, and its line gets no interval);
- cost: each run's labelling cost per labelled claim (its summary.json's cost block: requests, prompt tokens,
  engine-computed tokens, wall seconds, dollars on the hosted API) beside its accuracy, and the evaluation's own
  (its eval.json's); per labeller, the mean over the runs that recorded one.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from scipy import stats

from src.config.run_config import RunConfig

CONFIDENCE = 0.95
RESAMPLES = 2000
LABELLER_ORDER = ("random", "bootstrap", "bootstrap-consistency", "icm")  # the figure's order: cheapest first
LABELLER_NAMES = {"icm": "ICM", "random": "random", "bootstrap": "bootstrap", "bootstrap-consistency": "bootstrap+consistency"}
ZERO_SHOT, GOLD = "zero-shot", "gold labels"
# Recorded settings that don't change a run's labels: the seed (what a line varies over), where files are
# (paths differ between machines; the data's content is told apart by its sha256, _group_key), the response
# cache, rate limits, and what is derived from other settings.
NOT_RESULT_SETTINGS = ("seed", "data_dir", "data", "cache_dir", "no_cache", "requests_per_minute", "tokens_per_minute",
                       "consistency_key_from_gold", "gold_used_by")


def result_settings(settings: dict) -> dict[str, Any]:
    """The recorded ``settings`` (run.json's) that change a run's result, bar the seed: RunConfig.from_json(...)
    .to_json() (so an older run's missing settings take the values it ran with) without NOT_RESULT_SETTINGS."""
    full = RunConfig.from_json(settings).to_json()
    return {name: value for name, value in full.items() if name not in NOT_RESULT_SETTINGS}


def _gap_statistic(zero: np.ndarray, gold: np.ndarray, run: np.ndarray, axis: int = -1) -> np.ndarray:
    """(run − zero) / (gold − zero) over the test items on ``axis``; NaN where golden does not beat zero-shot
    (compared as counts of right items, so equal accuracies are exactly equal)."""
    zero_mean, gap = zero.mean(axis=axis), gold.mean(axis=axis) - zero.mean(axis=axis)
    recovered = run.mean(axis=axis) - zero_mean
    defined = gold.sum(axis=axis) > zero.sum(axis=axis)
    return np.divide(recovered, gap, out=np.full(np.shape(gap), np.nan), where=defined) + 0.0  # no −0


def _no_negative_zero(value: float) -> float:
    return value + 0.0  # −0.0 + 0.0 is 0.0: a ratio of 0 is printed and written as 0, never "-0.0"


def gap_recovered(zero: Sequence[int], gold: Sequence[int], run: Sequence[int], *, seed: int = 0,
                  resamples: int = RESAMPLES) -> dict[str, Any]:
    """The performance gap recovered by ``run`` between ``zero`` (zero-shot) and ``gold`` (golden labels), from
    their per-item correctness (1/0, the same test items in the same order), with a 95% paired percentile-
    bootstrap interval (scipy.stats.bootstrap, ``resamples`` resamples drawn by numpy's default_rng(seed)).

    Returns {"value", "ci_low", "ci_high", "reason"}: a fraction (1 = all of the gap, below 0 = worse than
    zero-shot, above 1 = better than golden); "reason" is None, or says why the value or interval is None. The
    value is None when golden does not beat zero-shot (there is no gap, or it runs the other way), and the
    interval is None when that happens in a resample. Raises ValueError if the three differ in length."""
    arrays = [np.asarray(values, dtype=float) for values in (zero, gold, run)]
    if len({len(a) for a in arrays}) != 1 or not len(arrays[0]):
        raise ValueError("gap_recovered needs the same test items, at least one, under every condition")
    zero_right, gold_right = arrays[0].sum(), arrays[1].sum()  # counts, not float means: exact comparisons
    if gold_right == zero_right:
        accuracy = 100 * arrays[0].mean()
        return {"value": None, "ci_low": None, "ci_high": None,
                "reason": f"golden and zero-shot accuracy are equal ({accuracy:.1f}%): there is no gap to recover"}
    if gold_right < zero_right:
        return {"value": None, "ci_low": None, "ci_high": None,
                "reason": f"golden labels do not beat zero-shot here ({100 * arrays[1].mean():.1f}% vs "
                          f"{100 * arrays[0].mean():.1f}%): there is no gap to recover"}
    value = _no_negative_zero(float(_gap_statistic(*arrays)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns of degenerate resamples; they are counted below
        result = stats.bootstrap(tuple(arrays), _gap_statistic, paired=True, vectorized=True,
                                 confidence_level=CONFIDENCE, n_resamples=resamples, method="percentile",
                                 rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        undefined = int(np.isnan(result.bootstrap_distribution).sum())
        return {"value": value, "ci_low": None, "ci_high": None,
                "reason": f"golden does not beat zero-shot in {undefined} of {resamples} resamples of the test "
                          "items: too small a gap, or too few test items, for an interval"}
    return {"value": value, "ci_low": _no_negative_zero(low), "ci_high": _no_negative_zero(high), "reason": None}


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
        "settings": result_settings(settings), "pool_source_sha256": report.get("pool_source_sha256"),
        "condition": report["run_condition"], "n_test": report["n_test"], "eval_reused": reused,
        "test_accuracy": _interval(own), "zero_shot": _interval(conditions[ZERO_SHOT]), "golden": _interval(gold),
        "gap_recovered": gap, "pool_label_accuracy": report.get("pool_label_accuracy"),
        "labelling_cost": labelling_cost(summary), "evaluation_cost": evaluation_cost(report),
    }


def _group_key(run: dict) -> tuple:
    """Runs alike in everything that changes results but the seed: the testbed and model they were evaluated on,
    their result_settings and the content of the data their pools were drawn from (eval.json's sha256 of it;
    None for a run recorded before that hash)."""
    return run["testbed"], run["model"], json.dumps(_line_settings(run), sort_keys=True)


def _line_settings(run: dict) -> dict[str, Any]:
    """What tells lines apart: the run's result_settings and, as "pool_data", its pool data's sha256 (short)."""
    digest = run.get("pool_source_sha256")
    return {**run["settings"], "pool_data": digest[:12] if isinstance(digest, str) else None}


def _labeller_rank(labeller: str) -> int:
    return LABELLER_ORDER.index(labeller) if labeller in LABELLER_ORDER else len(LABELLER_ORDER)


def _setting_text(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _distinguishing_labels(lines: Sequence[dict]) -> None:
    """Give each line its "label": the settings that differ between it and the other lines of the same testbed,
    model and labeller ("" for a labeller with one line), so a figure's bars can be told apart at a glance."""
    siblings: dict[tuple, list[dict]] = {}
    for line in lines:
        siblings.setdefault((line["testbed"], line["model"], line["labeller"]), []).append(line)
    for members in siblings.values():
        told = [_line_settings(m) for m in members]
        names = sorted({name for settings in told for name in settings})
        differing = [name for name in names if len({json.dumps(settings.get(name)) for settings in told}) > 1]
        for line, settings in zip(members, told):
            line["label"] = ", ".join(f"{name}={_setting_text(settings.get(name))}" for name in differing)


def repeated_seeds(members: Sequence[dict]) -> list:
    """The seeds that more than one of ``members`` (runs of one line) was made with, in order of appearance."""
    seeds = [m["seed"] for m in members]
    return [seed for index, seed in enumerate(seeds) if seeds.count(seed) > 1 and seeds.index(seed) == index]


def _no_interval(interval: Optional[dict]) -> Optional[dict]:
    return None if interval is None else {**interval, "ci_low": None, "ci_high": None}


def group_entries(runs: Sequence[dict]) -> list[dict[str, Any]]:
    """One line per labeller and setting: runs alike in _group_key (differing in seed), with the mean and 95%
    t-interval across them of test accuracy, gap recovered (over the runs where it is defined) and pool-label
    accuracy. A line where a seed appears twice gets means but no intervals ("interval_note" says why): runs of
    one seed and one setting repeat one labelling rather than sample another."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(_group_key(run), []).append(run)
    lines = []
    for _, members in sorted(groups.items(), key=lambda item: (str(item[0][:2]), _labeller_rank(item[1][0]["labeller"]),
                                                                 item[0][2])):
        first = members[0]
        gaps = [m["gap_recovered"]["value"] for m in members]
        pool = [m["pool_label_accuracy"]["accuracy"] for m in members if m["pool_label_accuracy"]]
        repeated = repeated_seeds(members)
        intervals = {"test_accuracy": t_interval(m["test_accuracy"]["accuracy"] for m in members),
                     "gap_recovered": t_interval(gaps), "pool_label_accuracy": t_interval(pool)}
        note = None
        if repeated:
            intervals = {name: _no_interval(interval) for name, interval in intervals.items()}
            note = (f"seed {', '.join(map(str, repeated))} appears more than once among these {len(members)} runs of one "
                    "setting: a repeated seed is not an independent sample, so there is no interval across them")
        lines.append({
            "testbed": first["testbed"], "model": first["model"], "labeller": first["labeller"],
            "alpha": first["alpha"], "true_share": first["true_share"], "settings": first["settings"],
            "pool_source_sha256": first["pool_source_sha256"],
            "runs": len(members), "run_dirs": [m["run_dir"] for m in members],
            "seeds": [m["seed"] for m in members], "repeated_seeds": repeated,
            "interval_note": note,
            "test_accuracy": intervals["test_accuracy"],
            "gap_recovered": intervals["gap_recovered"], "gap_recovered_undefined_runs": sum(g is None for g in gaps),
            "pool_label_accuracy": intervals["pool_label_accuracy"],
            "cost_per_labelled_claim": _mean_cost(members),
        })
    _distinguishing_labels(lines)
    return lines


def _bar(name: str, kind: str, values: Sequence[dict], *, interval_note: Optional[str] = None) -> dict[str, Any]:
    """A bar over ``values`` (condition intervals of distinct runs): one run's bootstrap interval, or the mean
    and t-interval across several (none when ``interval_note`` says why not)."""
    if len(values) == 1:
        only = values[0]
        return {"bar": name, "kind": kind, "mean": only["accuracy"], "ci_low": only["ci_low"],
                "ci_high": only["ci_high"], "runs": 1, "interval": "bootstrap over test items"}
    across = t_interval(v["accuracy"] for v in values)
    if interval_note:
        return {"bar": name, "kind": kind, "mean": across["mean"], "ci_low": None, "ci_high": None,
                "runs": len(values), "interval": f"none: {interval_note}"}
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
    labeller (cheapest first; one bar per line of group_entries, named by the settings that tell a labeller's
    lines apart), golden labels."""
    panels: dict[tuple, list[int]] = {}
    for index, run in enumerate(runs):
        panels.setdefault((run["testbed"], run["model"]), []).append(index)
    drawn = []
    for (testbed, model), indices in panels.items():
        members = [runs[i] for i in indices]
        bars = [_bar("zero-shot", "zero-shot", _distinct([reports[i] for i in indices], ZERO_SHOT))]
        for line in group_entries(members):
            name = LABELLER_NAMES.get(line["labeller"], line["labeller"])
            if line["label"]:  # several settings of one labeller: say which bar is which
                name += "\n" + line["label"].replace(", ", "\n")
            alike = [m["test_accuracy"] for m in members if _group_key(m) == _group_key(line)]
            bars.append(_bar(name, line["labeller"], alike, interval_note=line["interval_note"]))
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
                      "across_runs": "Student t over the runs of a line (mean ± t·s/√n), none for one run or for "
                                     "a line where a seed repeats"},
        "lines": "one per labeller and setting: runs alike in testbed, model and settings (bar the seed and paths)",
        "cost": {"labelling_cost": "the run's summary.json: every invocation of the run, and per labelled claim",
                 "evaluation_cost": "the evaluation's own scoring (its eval.json), and per test claim",
                 "cost_per_labelled_claim": "per labeller: the mean over its runs that recorded a cost"},
        "runs": runs,
        "labellers": group_entries(runs),
        "figure": figure_panels(runs, [report for _, _, report, _ in evaluated]),
    }


def percent_text(fraction: float, form: str = ".1f") -> str:
    """``fraction`` as a percentage in ``form``, with a value that rounds to zero written as 0 ("0.0", never
    "-0.0": a gap of −0.0001 is no gap worse than zero-shot to a reader)."""
    text = format(100 * fraction, form)
    return format(0.0, form) if float(text) == 0 else text


def _percent(value: Optional[float]) -> str:
    return "   -  " if value is None else f"{percent_text(value, '5.1f')}%"


def _span(low: Optional[float], high: Optional[float]) -> str:
    return "" if low is None or high is None else f" [{percent_text(low)}, {percent_text(high)}]"


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
        setting = f" ({line['label']})" if line.get("label") else ""
        lines.append(f"  {line['testbed']:10s} {line['labeller'] + setting:22s} runs={line['runs']:<3d} "
                     f"test {_percent(test['mean'])}{_span(test['ci_low'], test['ci_high'])}  "
                     f"gap {_percent(gap['mean'] if gap else None)}{_span(gap['ci_low'], gap['ci_high']) if gap else ''}  "
                     f"pool {_percent(pool['mean'] if pool else None)}  engine tokens/claim "
                     f"{_mean_per_claim(line, 'computed_prompt_tokens', '{:,.0f}')}  $/claim {_mean_per_claim(line, 'dollars', '{:.6f}')}"
                     + ("  (no interval: a seed repeats)" if line.get("interval_note") else ""))
    return "\n".join(lines)
