"""ICM and the cheap baselines on the synthetic model: how each labeller does as the pool's share of true claims
moves, and how the signals without gold relate to the labels' accuracy.

    python scripts/measure_labellers_synthetic.py --out results/labellers-synthetic --data-dir ../shared/data/icm

Runs src/experiments/sweep.py in this process, with the model replaced by the synthetic model
(src/benchmarks/synthetic_model.py): every claim of the testbed's data has a weak prior towards its gold label,
and in-context demonstrations vote by feature similarity, so labels that agree with gold predict each other.
Everything else is the product's: the pool (``--true-share``, ``--pool-seed``), the labellers, the run
directories, sweep.csv and sweep_summary.csv. It then prints:

- per labeller and true share: pool-label accuracy against gold, mean and 95% t-interval over the seeds;
- per signal without gold: its Spearman rank correlation with pool-label accuracy, over the cells (a cell's
  final energy, remaining violations, share-of-True drift, distance of its final share of True from one half) and
  over the settings (mean seed agreement).

A re-run with the same --out reuses the finished cells (the sweep resumes).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import stats

import src.run
from core.llm_api.llm import ModelAPI
from core.process_exit import exit_process
from src.benchmarks.synthetic_model import SyntheticModel
from src.cli.cli_errors import OneLineParser, run_main
from src.cli.cli_numbers import Bounded
from src.data.testbeds import TESTBEDS, load_testbed_claims
from src.experiments import sweep
from src.pipeline.pool_scoring import PoolScorer
from src.sweep.aggregate import SWEEP_CSV, SWEEP_SUMMARY_CSV

LABELLERS = ("random", "bootstrap", "bootstrap-consistency", "icm")


def synthetic_pipeline(claims: list[dict], prior_weight: float, prior_noise: float, icl_weight: float) -> type:
    """A stand-in for src.run.ScoringPipeline whose model is the synthetic model over ``claims`` (their gold
    labels planted)."""
    class SyntheticPipeline:
        def __init__(self, options, settings) -> None:
            self.route = SyntheticModel(claims, [c["label"] for c in claims], seed=0, prior_weight=prior_weight,
                                        prior_noise=prior_noise, icl_weight=icl_weight)
            self.model_api = ModelAPI(settings=settings, route=self.route)
            self.scorer = PoolScorer(self.model_api, options.prompts)

        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            self.model_api.close()

    return SyntheticPipeline


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def number(value: str) -> Optional[float]:
    return float(value) if value not in ("", None) else None


def spearman(pairs: Sequence[tuple[Optional[float], Optional[float]]]) -> tuple[Optional[float], int]:
    known = [(a, b) for a, b in pairs if a is not None and b is not None]
    if len(known) < 3 or len({a for a, _ in known}) < 2:
        return None, len(known)
    rho = stats.spearmanr([a for a, _ in known], [b for _, b in known]).statistic
    return float(rho), len(known)


def report(out: Path) -> None:
    cells = [r for r in read_csv(out / SWEEP_CSV) if r["state"] == "done"]
    settings = read_csv(out / SWEEP_SUMMARY_CSV)
    shares = sorted({r["true_share"] for r in settings}, key=float)
    print("pool-label accuracy against gold: mean [95% t-interval] over seeds")
    print(f"{'labeller':24s}" + "".join(f"{'share ' + s:>22s}" for s in shares))
    for labeller in LABELLERS:
        line = f"{labeller:24s}"
        for share in shares:
            match = [r for r in settings if r["labeller"] == labeller and r["true_share"] == share]
            if not match or number(match[0]["pool_label_accuracy_mean"]) is None:
                line += f"{'-':>22s}"
                continue
            r = match[0]
            low, high = number(r["pool_label_accuracy_ci_low"]), number(r["pool_label_accuracy_ci_high"])
            interval = f"[{low:.2f}, {high:.2f}]" if low is not None else ""
            line += f"{float(r['pool_label_accuracy_mean']):>8.2f} {interval:>13s}"
        print(line)
    accuracy = [number(r["pool_label_accuracy"]) for r in cells]
    per_cell = {
        "final energy": [number(r["final_energy"]) for r in cells],
        "violations left": [number(r["inconsistent_num"]) for r in cells],
        "share-of-True drift": [number(r["share_true_drift"]) for r in cells],
        "|final share of True - 0.5|": [None if number(r["share_true"]) is None else abs(float(r["share_true"]) - 0.5)
                                        for r in cells],
    }
    print("\nSpearman correlation with pool-label accuracy (cells: every labeller, share and seed)")
    for name, values in per_cell.items():
        rho, n = spearman(list(zip(values, accuracy)))
        print(f"  {name:30s} rho = {'-' if rho is None else f'{rho:+.2f}'}  (n = {n})")
    pairs = [(number(r["seed_agreement_mean"]), number(r["pool_label_accuracy_mean"])) for r in settings]
    rho, n = spearman(pairs)
    print(f"  {'seed agreement (per setting)':30s} rho = {'-' if rho is None else f'{rho:+.2f}'}  (n = {n})")
    for labeller in LABELLERS:
        rows = [r for r in settings if r["labeller"] == labeller and number(r["seed_agreement_mean"]) is not None]
        if rows:
            mean_agreement = np.mean([float(r["seed_agreement_mean"]) for r in rows])
            print(f"    {labeller:24s} mean seed agreement {mean_agreement:.2f}")


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the sweep's folder")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with the paper's JSON files")
    parser.add_argument("--testbed", default="gsm8k", choices=[t for t in TESTBEDS if t not in ("custom", "demo")])
    parser.add_argument("--pool", type=int, default=32, action=Bounded, at_least=2, help="claims per pool")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--true-shares", nargs="+", default=["0.1", "0.3", "0.5", "0.7", "0.9"])
    parser.add_argument("--labellers", nargs="+", default=list(LABELLERS), choices=LABELLERS)
    parser.add_argument("--K", type=int, default=200, action=Bounded, at_least=0, help="ICM's iterations")
    parser.add_argument("--pool-seed", type=int, default=7, action=Bounded, at_least=0,
                        help="every seed labels the same pool, so seed agreement can be measured (0 or more)")
    parser.add_argument("--prior-weight", type=float, default=0.6, help="the synthetic model's zero-shot lean to gold")
    parser.add_argument("--prior-noise", type=float, default=0.6, help="noise on that lean (sd)")
    parser.add_argument("--icl-weight", type=float, default=1.0, help="weight of the demonstrations' vote")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        claims, _, _ = load_testbed_claims(args.testbed, args.data_dir, None, True)
        real_pipeline = src.run.ScoringPipeline
        src.run.ScoringPipeline = synthetic_pipeline(claims, args.prior_weight, args.prior_noise, args.icl_weight)
        try:
            code = sweep.main([
                "--out", str(args.out), "--seeds", *map(str, args.seeds), "--labellers", *args.labellers,
                "--true-shares", *args.true_shares, "--testbeds", args.testbed,
                "--", "--batch_size", str(args.pool), "--num_seed", str(min(8, args.pool // 2 * 2)), "--K", str(args.K),
                "--pool-seed", str(args.pool_seed), "--data-dir", str(args.data_dir), "--no-progress", "--no-cache",
            ])
        finally:
            src.run.ScoringPipeline = real_pipeline  # this process's later runs (a test's) get the real model again
        if code == 0:
            report(args.out)
        return code

    return run_main(body)


if __name__ == "__main__":
    exit_process(main())
