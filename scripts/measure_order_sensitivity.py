"""Does the tree layout move scores more than another pool order would?

    python scripts/measure_order_sensitivity.py                                   # embedded SmolLM2, pools 32 and 64
    python scripts/measure_order_sensitivity.py --base-url http://127.0.0.1:8000  # a vLLM (or llama.cpp) server

The reference shows the demonstrations in pool order, and the pool order itself is random (it comes from the
seed), so another order is not wrong in itself. For a fixed gold-labelled TruthfulQA pool, this scores every
claim's leave-one-out prompt in the reference layout, in the reference layout under --permutations random
pool orders, and in the tree layout. It prints, against the reference layout, the mean absolute change of the
label log-odds and the share of claims whose predicted label (the log-odds' sign) stays the same, and writes
the figures as JSON. If the tree moves scores no more than a random permutation does, it is another valid order.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import check_url, load_settings, split_url_list
from core.process_exit import exit_process
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.cli.cli_numbers import Bounded
from src.data.claims import Claim
from src.run_directory.output_paths import data_files, refuse_run_file, refuse_writing_over
from src.run_directory.run_directory import write_atomically
from src.data.testbeds import TESTBED_SPECS, load_testbed_claims, sample_pool
from src.config.run_config import PromptConfig
from src.pipeline.pool_scoring import PoolScorer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "icm"


def gold_pool(data_dir: Path, size: int, seed: int) -> list[dict]:
    claims, source, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    return sample_pool(claims, TESTBED_SPECS["truthfulQA"], size, random.Random(seed), source)


def scores_in_order(api: ModelAPI, pool: list[dict], order: list[int], layout: str) -> list[float]:
    """Each claim's leave-one-out log-odds (indexed as in ``pool``) with the pool shown in ``order``."""
    claims = {position: Claim.from_record(pool[index], position, pool[index]["label"]) for position, index in enumerate(order)}
    scores = PoolScorer(api, PromptConfig(prompt_layout=layout)).pool_scores(claims)
    by_index = {order[position]: score for position, score in scores.items()}
    return [by_index[i] for i in range(len(pool))]


def compare(base: list[float], other: list[float]) -> dict:
    a, b = np.array(base), np.array(other)
    return {"mean_abs_change": float(np.mean(np.abs(a - b))), "label_agreement": float(np.mean((a > 0) == (b > 0)))}


def gold_agreement(scores: list[float], pool: list[dict]) -> float:
    return float(np.mean([(s > 0) == bool(c["label"]) for s, c in zip(scores, pool)]))


def measure_pool(api: ModelAPI, pool: list[dict], permutations: int, seed: int) -> dict:
    identity = list(range(len(pool)))
    started = time.perf_counter()
    reference = scores_in_order(api, pool, identity, "reference")
    entry: dict = {"reference": {"gold_agreement": gold_agreement(reference, pool)}, "permutations": []}
    rng = random.Random(seed)
    for _ in range(permutations):
        order = rng.sample(identity, len(identity))
        scores = scores_in_order(api, pool, order, "reference")
        entry["permutations"].append({**compare(reference, scores), "gold_agreement": gold_agreement(scores, pool)})
    tree = scores_in_order(api, pool, identity, "tree")
    entry["tree"] = {**compare(reference, tree), "gold_agreement": gold_agreement(tree, pool)}
    entry["seconds"] = round(time.perf_counter() - started, 1)
    return entry


def print_table(results: dict) -> None:
    print("| pool | against the reference layout | mean abs. log-odds change (nats) | labels unchanged | gold agreement |")
    print("|---|---|---|---|---|")
    for size, entry in results["pools"].items():
        print(f"| {size} | reference layout itself | 0 | 100% | {entry['reference']['gold_agreement']:.0%} |")
        perms = entry["permutations"]
        if perms:
            changes = [p["mean_abs_change"] for p in perms]
            agreements = [p["label_agreement"] for p in perms]
            golds = [p["gold_agreement"] for p in perms]
            print(f"| {size} | {len(perms)} random pool orders (mean, range) | {np.mean(changes):.3f} ({min(changes):.3f}–{max(changes):.3f}) "
                  f"| {np.mean(agreements):.1%} ({min(agreements):.1%}–{max(agreements):.1%}) | {np.mean(golds):.0%} ({min(golds):.0%}–{max(golds):.0%}) |")
        tree = entry["tree"]
        print(f"| {size} | tree layout | {tree['mean_abs_change']:.3f} | {tree['label_agreement']:.1%} | {tree['gold_agreement']:.0%} |")


def verdict(results: dict) -> str:
    if not all(entry["permutations"] for entry in results["pools"].values()):
        return "no verdict: no random pool order was measured (--permutations 0) to compare the tree with"
    moved_more = [size for size, entry in results["pools"].items()
                  if entry["permutations"] and entry["tree"]["mean_abs_change"] > max(p["mean_abs_change"] for p in entry["permutations"])]
    if moved_more:
        return (f"the tree moves scores more than any random pool order at pool {', '.join(map(str, moved_more))}: "
                "keep it opt-in")
    return "the tree moves scores no more than a random pool order does: it is another valid order"


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--pools", type=int, nargs="+", default=[32, 64], action=Bounded, at_least=1,
                        help="pool sizes in claims (multiples of 4, TruthfulQA's group size)")
    parser.add_argument("--permutations", type=int, default=5, action=Bounded, at_least=0,
                        help="random pool orders to compare the tree with (0: the tree against the reference layout only)")
    parser.add_argument("--seed", type=int, default=0, action=Bounded, at_least=0)
    parser.add_argument("--base-url", default=None, help="a vLLM or llama.cpp server instead of the embedded model")
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", type=Path, default=None, help="default: results/order_sensitivity/<engine>.json")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    return run_main(lambda: measure(build_parser().parse_args(argv), argv))


def measure(args: argparse.Namespace, argv: Optional[list[str]]) -> int:
    for url in split_url_list(args.base_url or ""):
        check_url("--base-url", url, "on the command line")  # a SettingsError: one error line
    if not args.data_dir.is_dir():
        raise UserError(f"--data-dir {args.data_dir} is not a folder: point it at the paper's JSON files")
    bad = [size for size in args.pools if size % 4]
    if bad:
        raise UserError(f"--pools {bad[0]} must be a multiple of 4 (TruthfulQA's group size)")
    out = args.json or REPO_ROOT / "results" / "order_sensitivity" / f"{'vllm' if args.base_url else 'embedded'}.json"
    refuse_writing_over(out, "--json", data_files(args.data_dir), folder=False)
    refuse_run_file(out, "--json")
    settings = dataclasses.replace(load_settings(), vllm_base_url=args.base_url, llama_api_base=None)
    results: dict = {"command": "python scripts/measure_order_sensitivity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "pools": {}}
    with ModelAPI(args.model, settings=settings, use_vllm=True if args.base_url else None, show_progress=False) as api:
        results.update(engine=api.describe())
        for size in args.pools:
            results["pools"][size] = measure_pool(api, gold_pool(args.data_dir, size, args.seed), args.permutations, args.seed)
            print(f"pool {size}: {results['pools'][size]['seconds']} s", file=sys.stderr)
    print_table(results)
    results["verdict"] = verdict(results)
    print(results["verdict"])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    exit_process(main())
