"""Benchmark the ICM search loop: our request pattern against the reference code's, on the same engine.

    python scripts/benchmark_icm.py --testbed truthfulQA --pool 16 --K 10
    python scripts/benchmark_icm.py --regime steady --pool 32 --K 8 --rss-K 0 --layout-pool 0
    python scripts/benchmark_icm.py --base-url http://127.0.0.1:8000 --pool 64 --K 20

Both modes run the same search from the same seed, one after the other in this process:
- ``reference``: the reference code's pattern. One request per prompt, a decision query per inconsistent
  pair, and every pool score and prediction sent to the model again. Prompts in the reference layout.
- ``ours``: one batched request per pool score in trie order, memoised pool scores, and the --layout
  prompt layout (tree by default).
On the embedded engine each mode gets a fresh llama.cpp, so neither inherits the other's prompt cache.
Against --base-url both share one warm server; ours runs first so it cannot profit from the reference.

Two regimes (--regime): ``growing`` starts with --num-seed labelled claims, so most early iterations label a
new claim; ``steady`` starts with the whole pool labelled (random labels, as seeds are), so every iteration is
a proposed flip, as in most of a long run. For each regime and mode it reads the engine's counters after the
first scoring (the seed labels' pool score and repair) and after each iteration, and reports per iteration
the engine-computed tokens, requests, pool scores computed and wall time: median, interquartile range
(p25-p75) and min-max, and their totals.

Then ``ours`` runs on to --rss-K iterations to see whether memory grows with the run, and one pool of
--layout-pool claims (gold labels) is scored in each prompt layout to compare their cost and their scores.
It prints one table and writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from tqdm import tqdm

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import check_url, load_settings, split_url_list
from core.process_exit import exit_process
from src.benchmarks.call_recorder import CallRecorder, MeasuredScorer
from src.benchmarks.iteration_costs import CostCounters, iteration_costs, per_iteration, split_by_proposal
from src.benchmarks.prefix_trie import trie_size
from src.benchmarks.process_memory import peak_rss_mb, reset_peak_rss
from src.benchmarks.reference_pattern import ReferencePatternScorer, ReferencePatternSearch
from src.run_directory.checkpoint import pool_fingerprint, save_checkpoint
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.cli.cli_numbers import Bounded
from src.run_directory.output_paths import data_files, refuse_run_file, refuse_writing_over
from src.prompts.prompts import PROMPT_LAYOUTS
from src.run_directory.run_directory import RunDirectory, write_atomically
from src.run_directory.run_outputs import IterationLog
from src.search.annealing import ICMSearch, SearchSettings, SearchState, seed_claims
from src.data.testbeds import TESTBED_SPECS, TESTBEDS, load_testbed_claims, sample_pool
from src.config.run_config import PromptConfig
from src.pipeline.pool_scoring import PoolScorer

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "icm"
RSS_EARLY_ITERATION = 20
REGIMES = ("growing", "steady")
TARGETS = {
    "requests_per_pool_score": 1,
    "computed_over_trie": 1.05,
    "tree_over_reference_tokens": 0.25,
    "reference_over_ours_wall": 5.0,
    "client_overhead_share": 0.02,
    "rss_growth": 1.1,
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", default="truthfulQA", choices=[t for t in TESTBEDS if t != "custom"])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--pool", type=int, default=16, action=Bounded, at_least=1,
                        help="claims in the searched pool (a multiple of the testbed's group size)")
    parser.add_argument("--num-seed", type=int, default=8, action=Bounded, at_least=0,
                        help="claims that start labeled in the growing regime (even, below --pool; 0: none)")
    parser.add_argument("--regime", default=None, choices=(*REGIMES, "both"),
                        help="growing: --num-seed claims start labelled; steady: all of them do, so every iteration is a "
                             "flip; both (the default, or steady alone when --num-seed equals --pool, as before)")
    parser.add_argument("--K", type=int, default=10, action=Bounded, at_least=1, help="iterations each mode runs for the table")
    parser.add_argument("--seed", type=int, default=0, action=Bounded, at_least=0)
    parser.add_argument("--layout", default=PromptConfig().prompt_layout, choices=PROMPT_LAYOUTS,
                        help="ours' prompt layout (tree-volatility: the experiment of ordering the tree's chunks by label changes)")
    parser.add_argument("--modes", default="ours,reference", help="comma-separated: ours, reference")
    parser.add_argument("--rss-K", type=int, default=200, action=Bounded, at_least=0,
                        help=f"run ours on to this many iterations and compare peak RSS with iteration {RSS_EARLY_ITERATION} "
                             f"(above --K, and above {RSS_EARLY_ITERATION} for the comparison; 0: skip)")
    parser.add_argument("--layout-pool", type=int, default=64, action=Bounded, at_least=0,
                        help="pool size of the layout comparison (0: skip)")
    parser.add_argument("--base-url", default=None, help="a vLLM or llama.cpp server instead of the embedded engine")
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", type=Path, default=None, help="default: results/benchmark/<testbed>-pool<P>-K<K>-seed<S>.json")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def open_model_api(args: argparse.Namespace) -> ModelAPI:
    # EMBEDDED_* settings come from SECRETS and the environment as in a run, but the server is only --base-url,
    # so a configured server can't slip into an embedded benchmark.
    settings = dataclasses.replace(load_settings(), vllm_base_url=args.base_url, llama_api_base=None)
    return ModelAPI(args.model, settings=settings, use_vllm=True if args.base_url else None, show_progress=False)


def seeded_claims(regime: str, pool: int, num_seed: int) -> int:
    """How many claims start labelled: --num-seed when growing, the whole pool in the steady state."""
    return pool if regime == "steady" else num_seed


def labelled_pool(args: argparse.Namespace, size: int, gold: bool, regime: str = "growing") -> tuple[dict, random.Random]:
    """The pool the search labels (seeded from --seed), or with gold labels for the layout comparison."""
    claims, source, _ = load_testbed_claims(args.testbed, args.data_dir, None, True)
    rng = random.Random(args.seed)
    records = sample_pool(claims, TESTBED_SPECS[args.testbed], size, rng, source)
    pool = seed_claims(records, 0 if gold else seeded_claims(regime, size, args.num_seed), rng)
    if gold:
        pool = {uid: claim.relabelled(claim.gold_label) for uid, claim in pool.items()}
    return pool, rng


class TokenCounter:
    """Token counts of the prompts a run sent, from the engine's own tokenizer (memoised by text)."""

    def __init__(self, model_api: ModelAPI) -> None:
        self.model_api = model_api
        self._known: dict[str, list[int]] = {}

    def tokens(self, prompts: list[str]) -> list[list[int]]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._known))
        self._known.update(zip(missing, self.model_api.tokenize(missing)))
        return [self._known[p] for p in prompts]

    def sent_and_trie(self, recorder: CallRecorder) -> tuple[int, int]:
        sent = trie = 0
        for group in recorder.groups:
            tokens = self.tokens(group.prompts)
            sent += sum(len(t) for t in tokens)
            trie += trie_size(tokens)
        return sent, trie


class CounterReader:
    """Reads the run's counters; the time spent reading them (a /metrics request) is left out of the wall time."""

    def __init__(self, api: ModelAPI, scorer: Any) -> None:
        self.api, self.scorer = api, scorer
        self.started = time.perf_counter()
        self.reading_seconds = 0.0

    def read(self) -> CostCounters:
        at = time.perf_counter()
        stats = self.api.refresh_stats()
        counters = CostCounters(requests=stats.requests, computed_tokens=stats.computed_tokens, prompt_tokens=stats.prompt_tokens,
                                pool_scores=self.scorer.pool_scores_computed, seconds=at - self.started - self.reading_seconds)
        self.reading_seconds += time.perf_counter() - at
        return counters


def run_mode(mode: str, args: argparse.Namespace, regime: str = "growing", rss_check: bool = True) -> dict[str, Any]:
    """Run the search for --K iterations in one mode and regime and return its figures."""
    reset_peak_rss()
    api = open_model_api(args)
    try:
        recorder = CallRecorder(api)
        if mode == "reference":
            scorer: Any = ReferencePatternScorer(recorder, PromptConfig())
            search_class: Callable[..., ICMSearch] = ReferencePatternSearch
        else:
            scorer = PoolScorer(recorder, PromptConfig(prompt_layout=args.layout))
            search_class = ICMSearch
        claims, rng = labelled_pool(args, args.pool, gold=False, regime=regime)
        search = search_class(MeasuredScorer(scorer, recorder), SearchSettings(K=args.K), rng, SearchState(claims))
        rss_early: list[float] = []
        readings: list[CostCounters] = []
        newly_labelled: list[int] = []  # claims an iteration labelled for the first time (none in the steady state)
        proposed: list[bool] = []  # per measured iteration: did its prediction disagree with the label?
        run_record = {"run_id": "benchmark", "pool_fingerprint": pool_fingerprint(claims)}

        with tempfile.TemporaryDirectory() as out_name:
            files = RunDirectory(Path(out_name))
            log = IterationLog(files.log_file)
            bar = tqdm(total=args.K, desc=f"{regime[:6]} {mode:9s}", unit="iter", disable=args.no_progress, leave=False)

            def on_step(record: dict) -> None:
                # The CLI's per-iteration work: one log line and one checkpoint.
                log(record)
                save_checkpoint(files, run_record, search.state, rng)
                bar.update(1)
                if search.state.iteration <= args.K:
                    readings.append(reader.read())
                    proposed.append(bool(record["proposed"]))
                    if record["old_label"] is None:
                        newly_labelled.append(record["uid"])
                if search.state.iteration == RSS_EARLY_ITERATION:
                    rss_early.append(peak_rss_mb())

            reader = CounterReader(api, scorer)
            search.initialise()  # the first scoring: the seed labels' pool score and repair
            readings.append(reader.read())
            search.run(on_step)
            wall = time.perf_counter() - reader.started - reader.reading_seconds
            stats = dataclasses.replace(api.refresh_stats())
            figures = summarise(mode, args, recorder, scorer, stats, wall, TokenCounter(api))
            costs = iteration_costs(readings)
            figures.update(regime=regime, labelled_at_start=sum(c.label is not None for c in claims.values()),
                           iterations_labelling_a_new_claim=len(newly_labelled),
                           first_scoring=dataclasses.asdict(readings[0]),
                           per_iteration=per_iteration(costs), by_proposal=split_by_proposal(costs, proposed))

            if mode == "ours" and rss_check and args.rss_K > args.K:
                recorder.recording = False
                rss_started = time.perf_counter()
                search.settings = dataclasses.replace(search.settings, K=args.rss_K)
                bar.reset(total=args.rss_K)
                bar.update(args.K)
                search.run(on_step)
                figures["rss_check"] = {
                    "K_early": RSS_EARLY_ITERATION, "peak_rss_mb_early": round(rss_early[0], 1) if rss_early else None,
                    "K_late": args.rss_K, "peak_rss_mb_late": round(peak_rss_mb(), 1),
                    "seconds": round(time.perf_counter() - rss_started, 1),
                }
            bar.close()
            log.close()
        return figures
    finally:
        api.close()


def summarise(mode: str, args: argparse.Namespace, recorder: CallRecorder, scorer: Any, stats: Any, wall: float,
              counter: TokenCounter) -> dict[str, Any]:
    pool_groups = recorder.groups_of("pool")
    sent, trie = counter.sent_and_trie(recorder)
    return {
        "mode": mode,
        "layout": scorer.prompt_layout,
        "iterations": args.K,
        "pool_scores_computed": len(pool_groups),
        "pool_scores_reused": scorer.pool_scores_reused,
        "requests": stats.requests,
        "requests_per_pool_score": (sum(g.requests for g in pool_groups) / len(pool_groups)) if pool_groups else None,
        "decision_queries": len(recorder.groups_of("decision")),
        "prompt_tokens_sent": sent,
        "engine_computed_tokens": stats.computed_tokens,
        "trie_minimum_tokens": trie,
        "computed_over_trie": stats.computed_tokens / trie if trie else None,
        "wall_seconds": round(wall, 2),
        "wall_seconds_per_iteration": round(wall / max(args.K, 1), 3),
        "engine_seconds": round(stats.engine_seconds, 2),
        "client_overhead_share": max(0.0, wall - stats.engine_seconds) / wall if wall else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


LAYOUTS_COMPARED = ("reference", "tree")  # tree-volatility needs a search's history: without one it is the tree


def compare_layouts(args: argparse.Namespace) -> dict[str, Any]:
    """Score one gold-labelled pool in each layout (ours' request pattern): tokens, time and score movement."""
    claims, _ = labelled_pool(args, args.layout_pool, gold=True)
    results: dict[str, Any] = {"pool": args.layout_pool}
    scores: dict[str, dict[int, float]] = {}
    for layout in LAYOUTS_COMPARED:
        api = open_model_api(args)
        try:
            recorder = CallRecorder(api)
            scorer = MeasuredScorer(PoolScorer(recorder, PromptConfig(prompt_layout=layout)), recorder)
            started = time.perf_counter()
            scores[layout] = scorer.pool_scores(claims)  # filed under "pool" by MeasuredScorer
            seconds = time.perf_counter() - started
            stats = api.refresh_stats()
            sent, trie = TokenCounter(api).sent_and_trie(recorder)
            results[layout] = {"prompt_tokens_sent": sent, "engine_computed_tokens": stats.computed_tokens,
                               "trie_minimum_tokens": trie, "seconds": round(seconds, 1)}
        finally:
            api.close()
    reference, tree = (np.array([scores[layout][uid] for uid in sorted(claims)]) for layout in LAYOUTS_COMPARED)
    gold = np.array([claims[uid].label for uid in sorted(claims)])
    results["tree_over_reference_tokens"] = results["tree"]["engine_computed_tokens"] / results["reference"]["engine_computed_tokens"]
    results["mean_abs_score_difference"] = float(np.mean(np.abs(reference - tree)))
    results["label_agreement"] = float(np.mean((reference > 0) == (tree > 0)))
    results["gold_agreement"] = {"reference": float(np.mean((reference > 0) == gold)), "tree": float(np.mean((tree > 0) == gold))}
    return results


def targets(report: dict[str, Any]) -> list[tuple[str, Optional[float], str, Optional[bool]]]:
    """(target, measured, wanted, met) for each target the run measured, per regime."""
    rows: list[tuple[str, Optional[float], str, Optional[bool]]] = []
    for regime, entry in report["regimes"].items():
        ours, reference = entry["modes"].get("ours"), entry["modes"].get("reference")
        tag = f" [{regime}]"
        if ours:
            value = ours["requests_per_pool_score"]
            rows.append(("requests per pool score (ours)" + tag, value, "= 1", value == TARGETS["requests_per_pool_score"]))
            value = ours["computed_over_trie"]
            rows.append(("engine tokens / trie minimum (ours)" + tag, value, "≤ 1.05",
                         value is not None and value <= TARGETS["computed_over_trie"]))
            value = ours["client_overhead_share"]
            rows.append(("client overhead share (ours)" + tag, value, "≤ 0.02",
                         value is not None and value <= TARGETS["client_overhead_share"]))
            check = ours.get("rss_check")
            if check and check["peak_rss_mb_early"]:
                value = check["peak_rss_mb_late"] / check["peak_rss_mb_early"]
                rows.append((f"peak RSS K={check['K_late']} / K={check['K_early']}" + tag, value, "≤ 1.1", value <= TARGETS["rss_growth"]))
        if ours and reference:
            value = entry["ratios"]["wall_seconds_per_iteration"]
            rows.append(("wall per iteration, reference / ours" + tag, value, "≥ 5", value >= TARGETS["reference_over_ours_wall"]))
    layouts = report.get("layouts")
    if layouts:
        value = layouts["tree_over_reference_tokens"]
        rows.append((f"tree / reference engine tokens, pool {layouts['pool']}", value, "≤ 0.25", value <= TARGETS["tree_over_reference_tokens"]))
    return rows


ROWS = [
    ("pool scores computed", "pool_scores_computed", "{:.0f}"),
    ("requests per pool score", "requests_per_pool_score", "{:.2f}"),
    ("decision queries", "decision_queries", "{:.0f}"),
    ("requests in all", "requests", "{:.0f}"),
    ("prompt tokens sent", "prompt_tokens_sent", "{:,.0f}"),
    ("engine-computed tokens", "engine_computed_tokens", "{:,.0f}"),
    ("prefix-trie minimum", "trie_minimum_tokens", "{:,.0f}"),
    ("engine / trie", "computed_over_trie", "{:.3f}"),
    ("wall s / iteration", "wall_seconds_per_iteration", "{:.2f}"),
    ("client overhead share", "client_overhead_share", "{:.2%}"),
    ("peak RSS (MiB)", "peak_rss_mb", "{:.0f}"),
]
RATIO_KEYS = ["requests", "prompt_tokens_sent", "engine_computed_tokens", "trie_minimum_tokens", "wall_seconds_per_iteration"]
# Per iteration after the first scoring: (row label, CostCounters field, number format).
ITERATION_ROWS = [
    ("engine-computed tokens", "computed_tokens", "{:,.0f}"),
    ("requests", "requests", "{:,.0f}"),
    ("pool scores computed", "pool_scores", "{:.0f}"),
    ("wall s", "seconds", "{:.2f}"),
]


def show(value: Any, form: str) -> str:
    return "—" if value is None else form.format(value)


def show_spread(spread: Optional[dict[str, float]], form: str) -> str:
    """median (p25–p75)"""
    if not spread:
        return "—"
    return f"{form.format(spread['median'])} ({form.format(spread['p25'])}–{form.format(spread['p75'])})"


def regime_ratios(modes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """reference / ours for the run totals, and for the per-iteration medians and totals after the first scoring."""
    ours, reference = modes["ours"], modes["reference"]
    ratios = {k: reference[k] / ours[k] for k in RATIO_KEYS if ours[k]}
    for _, field, _ in ITERATION_ROWS:
        theirs, mine = reference["per_iteration"].get(field), ours["per_iteration"].get(field)
        if theirs and mine:
            for stat in ("median", "total"):
                if mine[stat]:
                    ratios[f"per_iteration_{stat}_{field}"] = theirs[stat] / mine[stat]
    return ratios


def table_lines(report: dict[str, Any]) -> list[list[str]]:
    """One table: a column per regime and mode, and reference / ours per regime when both modes ran."""
    columns: list[tuple[str, str]] = []  # (regime, mode or "ratio")
    header = [""]
    for regime, entry in report["regimes"].items():
        modes = entry["modes"]
        names = [m for m in ("reference", "ours") if m in modes]
        for m in names:
            columns.append((regime, m))
            header.append(f"{regime} ({entry['labelled_at_start']} of {report['settings']['pool']} labelled): {m} ({modes[m]['layout']})")
        if len(names) == 2:
            columns.append((regime, "ratio"))
            header.append(f"{regime}: reference / ours")
    lines = [header]

    def cell_of(regime: str, column: str, value_of: Any, ratio_key: Optional[str]) -> str:
        entry = report["regimes"][regime]
        if column == "ratio":
            return show(entry["ratios"].get(ratio_key), "{:.2f}×") if ratio_key else ""
        return value_of(entry["modes"][column])

    for label, key, form in ROWS:
        lines.append([label] + [cell_of(r, c, lambda m: show(m[key], form), key if key in RATIO_KEYS else None) for r, c in columns])
    for stat, title in (("median", "per iteration, median (IQR)"), ("total", "after the first scoring, total")):
        lines.append([f"**{title}**"] + [""] * len(columns))
        for label, field, form in ITERATION_ROWS:
            if stat == "median":
                value_of = lambda m, f=field, fm=form: show_spread(m["per_iteration"].get(f), fm)  # noqa: E731
            else:
                value_of = lambda m, f=field, fm=form: show((m["per_iteration"].get(f) or {}).get("total"), fm)  # noqa: E731
            lines.append([label] + [cell_of(r, c, value_of, f"per_iteration_{stat}_{field}") for r, c in columns])
    return lines


def show_split(spreads: dict[str, dict[str, float]]) -> str:
    """Medians of one side of split_by_proposal: engine tokens, pool scores, requests, seconds."""
    if not spreads:
        return "none"
    return (f"median {spreads['computed_tokens']['median']:,.0f} engine tokens, {spreads['pool_scores']['median']:g} pool scores, "
            f"{spreads['requests']['median']:g} requests, {spreads['seconds']['median']:.2f} s")


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{report['command']}\n")
    lines = table_lines(report)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\nPer iteration: after the first scoring (the seed labels' pool score and repair); median with the "
          "interquartile range (p25–p75); min–max in the JSON.")
    for regime, entry in report["regimes"].items():
        for mode, figures in entry["modes"].items():
            split = figures.get("by_proposal")
            if split:
                print(f"{regime} {mode}: {split['proposals']} of {split['iterations']} iterations proposed a flip; "
                      f"per proposal {show_split(split['per_proposal'])}; per other iteration "
                      f"{show_split(split['per_other_iteration'])}")
    layouts = report.get("layouts")
    if layouts:
        print(f"\nOne pool score of {layouts['pool']} gold-labelled claims, ours' request pattern:")
        for layout in LAYOUTS_COMPARED:
            figures = layouts[layout]
            print(f"  {layout:9s} layout: {figures['prompt_tokens_sent']:,} tokens sent, {figures['engine_computed_tokens']:,} computed, "
                  f"trie {figures['trie_minimum_tokens']:,}, {figures['seconds']} s")
        print(f"  tree / reference computed tokens: {layouts['tree_over_reference_tokens']:.3f}; scores move by "
              f"{layouts['mean_abs_score_difference']:.3f} nats on average; labels agree on {layouts['label_agreement']:.1%}")
    for regime, entry in report["regimes"].items():
        check = entry["modes"].get("ours", {}).get("rss_check")
        if check:
            print(f"\nPeak RSS of ours ({regime}): {check['peak_rss_mb_early']} MiB at iteration {check['K_early']}, "
                  f"{check['peak_rss_mb_late']} MiB at iteration {check['K_late']}")
    print("\nTargets:")
    for name, value, wanted, met in targets(report):
        print(f"  {'✓' if met else '✗'} {name}: {show(value, '{:.3f}')} (want {wanted})")


def main(argv: Optional[list[str]] = None) -> int:
    return run_main(lambda: benchmark(build_parser().parse_args(argv), argv))


def chosen_regimes(regime: Optional[str], pool: int, num_seed: int) -> list[str]:
    """The regimes to run. Unset: both, or only the steady state when --num-seed already labels the whole pool
    (how the steady state was asked for before --regime existed)."""
    if regime is None:
        return ["steady"] if num_seed >= pool else list(REGIMES)
    if regime in ("growing", "both") and num_seed >= pool:
        raise UserError(f"--regime {regime} needs claims left to label, but --num-seed {num_seed} labels all of --pool {pool}: "
                        f"lower --num-seed, or use --regime steady")
    return list(REGIMES) if regime == "both" else [regime]


def benchmark(args: argparse.Namespace, argv: Optional[list[str]]) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"ours", "reference"}
    if unknown or not modes:
        raise UserError(f"--modes {args.modes!r}: use ours, reference or both")
    for url in split_url_list(args.base_url or ""):
        check_url("--base-url", url, "on the command line")  # a SettingsError: one error line
    if not args.data_dir.is_dir() and args.testbed != "demo":
        raise UserError(f"--data-dir {args.data_dir} is not a folder: point it at the paper's JSON files")
    group = TESTBED_SPECS[args.testbed].group_size or 1
    for flag, size in (("--pool", args.pool), ("--layout-pool", args.layout_pool)):
        if size < (group if flag == "--pool" else 0) or size % group:
            raise UserError(f"{flag} {size} must be a positive multiple of {args.testbed}'s group size {group}")
    if args.regime != "steady" and (not 0 <= args.num_seed <= args.pool or args.num_seed % 2):  # steady labels them all
        raise UserError(f"--num-seed {args.num_seed} must be even and at most --pool {args.pool}")
    regimes = chosen_regimes(args.regime, args.pool, args.num_seed)
    if args.rss_K and args.rss_K <= args.K:
        raise UserError(f"--rss-K {args.rss_K} must be above --K {args.K} (ours runs on from K to it), or 0 to skip the memory check")
    if args.rss_K and args.rss_K <= RSS_EARLY_ITERATION:
        print(f"note: --rss-K {args.rss_K} is not above {RSS_EARLY_ITERATION}: peak memory is reported, but not compared "
              f"with iteration {RSS_EARLY_ITERATION}'s", file=sys.stderr)
    out = args.json or REPO_ROOT / "results" / "benchmark" / f"{args.testbed}-pool{args.pool}-K{args.K}-seed{args.seed}.json"
    refuse_writing_over(out, "--json", data_files(args.data_dir), folder=False)
    refuse_run_file(out, "--json")
    command = "python scripts/benchmark_icm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {"command": command.strip(), "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "regimes": {}}
    for regime in regimes:
        entry: dict[str, Any] = {"labelled_at_start": seeded_claims(regime, args.pool, args.num_seed), "modes": {}, "ratios": {}}
        # Ours first: against a shared server it then can't profit from the reference's cache.
        for mode in sorted(modes, key=["ours", "reference"].index):
            # The memory check runs once, in the first regime.
            entry["modes"][mode] = run_mode(mode, args, regime, rss_check=regime == regimes[0])
            print(f"{regime} {mode}: {entry['modes'][mode]['wall_seconds']} s", file=sys.stderr)
        if len(entry["modes"]) == 2:
            entry["ratios"] = regime_ratios(entry["modes"])
        report["regimes"][regime] = entry
    if args.layout_pool:
        report["layouts"] = compare_layouts(args)
    report["targets"] = [{"target": n, "measured": v, "wanted": w, "met": m} for n, v, w, m in targets(report)]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    exit_process(main())
