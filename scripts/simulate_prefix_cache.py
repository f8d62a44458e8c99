"""Simulate vLLM's block prefix cache on ICM's pool scores: our plan for GPU scale, which no machine here runs.

    python scripts/simulate_prefix_cache.py --pools 64 128 256 --capacities 100000 250000 500000 1000000 2000000
    python scripts/simulate_prefix_cache.py --block-size 128      # vLLM on CPU (its default block; 32 is its least)
    python scripts/simulate_prefix_cache.py --steady-state --pools 16 32 64 128 --capacities 46000 --block-size 32

It takes real TruthfulQA claims and the embedded model's tokenizer, lays the leave-one-out prompts out in
the reference order or ours (tree layout, trie order), and replays a search-like run through the cache
model in src/benchmarks/block_cache.py: every iteration flips one random label, scores the pool, and keeps
the flip half the time. It prints the hit rate (cached prompt tokens / prompt tokens, as vLLM's
prefix_cache_hits/queries count it) per pool size and cache capacity, and the tokens left to compute.

--steady-state predicts what benchmark_icm.py --regime steady measures instead: the real search, from a fully
labelled pool, on a stand-in engine (src/benchmarks/steady_state.py), in four patterns: the reference code's,
ours in the reference layout, ours in the tree layout and ours in the tree-volatility layout. It prints the
engine-computed tokens and pool scores per iteration (median and interquartile range after the first scoring),
and splits the saving into memoisation (reference pattern / ours in the reference layout) and the tree (ours in
the reference layout / ours in the tree layout).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Optional

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from core.process_exit import exit_process
from src.benchmarks.block_cache import BLOCK_SIZE, CPU_BLOCK_SIZE, BlockPrefixCache
from src.benchmarks.prefix_trie import trie_size
from src.benchmarks.steady_state import PATTERNS, BlockTokens, SteadyStatePrediction, predicted_steady_state, saving_shares
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.cli.cli_numbers import Bounded
from src.config.run_config import PromptConfig
from src.data.claims import Claim
from src.run_directory.output_paths import data_files, refuse_run_file, refuse_writing_over
from src.prompts.prompts import (
    DEMO_SEPARATOR,
    demo_orders,
    demonstration_text,
    prompts_in_order,
    query_text,
    send_order,
)
from src.run_directory.run_directory import write_atomically
from src.data.testbeds import TESTBED_SPECS, load_testbed_claims, sample_pool

LABEL_STYLE = PromptConfig().label_style  # what a default run sends

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "icm"
LAYOUTS = {"reference": "reference", "ours": "tree"}


class ClaimTokens:
    """Each claim's tokens as a demonstration (per label) and as the query, tokenized once.

    BPE merges the separator differently at the end of a text ("\n\n" is one token) than before the next
    claim (two), so the separator is tokenized in context, once, and appended to each demonstration.
    """

    def __init__(self, pool: list[dict], api: ModelAPI) -> None:
        texts = []
        for claim in pool:
            for label in (0, 1):
                texts.append(demonstration_text(claim["prompt"], label, LABEL_STYLE).removesuffix(DEMO_SEPARATOR))
            texts.append(query_text(claim["prompt"], LABEL_STYLE))
        tokens = api.tokenize(texts)
        joined, alone = api.tokenize([DEMO_SEPARATOR + texts[2], texts[2]])
        separator = joined[:len(joined) - len(alone)]
        self.demo = [(tokens[3 * i] + separator, tokens[3 * i + 1] + separator) for i in range(len(pool))]
        self.query = [tokens[3 * i + 2] for i in range(len(pool))]

    def prompt(self, order: list[int], labels: list[int], claim: int) -> list[int]:
        tokens: list[int] = []
        for j in order:
            tokens += self.demo[j][labels[j]]
        return tokens + self.query[claim]


def as_claims(pool: list[dict], labels: list[int]) -> list[Claim]:
    return [Claim.from_record(record, uid, label) for uid, (record, label) in enumerate(zip(pool, labels))]


def pool_prompts(pool: list[dict], labels: list[int], tokens: ClaimTokens, layout: str) -> list[list[int]]:
    """The pool score's prompts as token lists, in the order they reach the engine."""
    orders = demo_orders(as_claims(pool, labels), layout)
    return [tokens.prompt(orders[i], labels, i) for i in send_order(orders)]


def simulate(pool: list[dict], tokens: ClaimTokens, layout: str, capacity: int, iterations: int, seed: int,
             block_size: int = BLOCK_SIZE) -> dict:
    rng = random.Random(seed)
    labels = [c["label"] for c in pool]
    cache = BlockPrefixCache(capacity, block_size)
    for _ in range(iterations):
        candidate = list(labels)
        candidate[rng.randrange(len(pool))] ^= 1
        for prompt in pool_prompts(pool, candidate, tokens, layout):
            cache.run(prompt)
        if rng.random() < 0.5:
            labels = candidate
    counters = cache.counters
    return {"hit_rate": counters.hit_rate, "computed_tokens_per_score": (counters.queried_tokens - counters.hit_tokens) / iterations}


def check_concatenation(pool: list[dict], tokens: ClaimTokens, api: ModelAPI, layout: str) -> float:
    """Share of prompts whose whole-text tokens equal the concatenated per-claim tokens (should be 1)."""
    sample = pool[:8]
    labels = [c["label"] for c in sample]
    claims = as_claims(sample, labels)
    orders = demo_orders(claims, layout)
    whole = api.tokenize(prompts_in_order(claims, LABEL_STYLE, orders))
    pieces = ClaimTokens(sample, api)
    return sum(w == pieces.prompt(orders[i], labels, i) for i, w in enumerate(whole)) / len(whole)


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--pools", type=int, nargs="+", default=[64, 128, 256], action=Bounded, at_least=1,
                        help=f"pool sizes in claims (multiples of TruthfulQA's group size, {TESTBED_SPECS['truthfulQA'].group_size})")
    parser.add_argument("--capacities", type=int, nargs="+", default=[100_000, 250_000, 500_000, 1_000_000, 2_000_000],
                        action=Bounded, at_least=1,
                        help="KV cache sizes in tokens (vLLM logs its size as 'GPU KV cache size: N tokens'; at least one block)")
    parser.add_argument("--iterations", type=int, default=8, action=Bounded, at_least=1, help="pool scores replayed per cell")
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE, action=Bounded, at_least=1,
                        help=f"the cache block in tokens: vLLM's default is {BLOCK_SIZE} on GPUs, {CPU_BLOCK_SIZE} on CPUs "
                             "(which take multiples of 32)")
    parser.add_argument("--seed", type=int, default=0, action=Bounded, at_least=0,
                        help="draws the pool (and, with --steady-state, the search's RNG, as benchmark_icm.py's --seed)")
    parser.add_argument("--steady-state", action="store_true",
                        help="predict the steady state's cost per iteration in each pattern (see above) instead of the replay")
    parser.add_argument("--K", type=int, default=8, action=Bounded, at_least=1,
                        help="iterations of the search per pattern with --steady-state (benchmark_icm.py's --K)")
    parser.add_argument("--json", type=Path, default=None)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    return run_main(lambda: simulate_all(build_parser().parse_args(argv)))


def simulate_all(args: argparse.Namespace) -> int:
    group = TESTBED_SPECS["truthfulQA"].group_size
    bad = [size for size in args.pools if size % group]
    if bad:
        raise UserError(f"--pools {bad[0]} must be a multiple of TruthfulQA's group size {group}")
    if args.json:
        refuse_writing_over(args.json, "--json", data_files(args.data_dir), folder=False)
        refuse_run_file(args.json, "--json")
    claims, source, _ = load_testbed_claims("truthfulQA", args.data_dir, None, True)
    if args.steady_state:
        return predict_all(args, claims, source)
    results: dict = {"block_size": args.block_size, "iterations": args.iterations, "pools": {}}
    with ModelAPI(settings=Settings(), use_vllm=None, show_progress=False) as api:
        print(f"tokenizer: {api.model}; claims from {source}; {args.iterations} pool scores per cell; "
              f"prompts run one after another", file=sys.stderr)
        for size in args.pools:
            pool = sample_pool(claims, TESTBED_SPECS["truthfulQA"], size, random.Random(args.seed), source)
            tokens = ClaimTokens(pool, api)
            labels = [c["label"] for c in pool]
            entry: dict = {"naive_tokens": None, "trie_tokens": {}, "capacities": {}}
            for name, layout in LAYOUTS.items():
                prompts = pool_prompts(pool, labels, tokens, layout)
                entry["naive_tokens"] = sum(len(p) for p in prompts)
                entry["trie_tokens"][name] = trie_size(prompts)
                entry.setdefault("concatenation_exact", {})[name] = check_concatenation(pool, tokens, api, layout)
            for capacity in args.capacities:
                try:
                    entry["capacities"][capacity] = {
                        name: simulate(pool, tokens, layout, capacity, args.iterations, args.seed, args.block_size)
                        for name, layout in LAYOUTS.items()
                    }
                except ValueError as exc:  # a prompt longer than the whole cache
                    raise UserError(f"--capacities {capacity} at pool {size}: {exc}; give a larger capacity") from None
            results["pools"][size] = entry
            print_pool(size, entry)
            if min(entry["concatenation_exact"].values()) < 1:
                print("warning: per-claim tokens don't add up to the whole prompts' tokens; counts are approximate",
                      file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.json, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def predict_all(args: argparse.Namespace, claims: list[dict], source: str) -> int:
    """--steady-state: each pattern's predicted cost per iteration at each pool size and capacity."""
    results: dict = {"block_size": args.block_size, "K": args.K, "seed": args.seed, "steady_state": {}}
    with ModelAPI(settings=Settings(), use_vllm=None, show_progress=False) as api:
        tokens = BlockTokens(api.tokenize)
        print(f"tokenizer: {api.model}; claims from {source}; the search from a fully labelled pool, K={args.K}, on the "
              f"answers of a stand-in at chance; prompts run one after another", file=sys.stderr)
        for size in args.pools:
            results["steady_state"][size] = {}
            for capacity in args.capacities:
                predictions: dict[str, SteadyStatePrediction] = {}
                for name, (mode, layout) in PATTERNS.items():
                    rng = random.Random(args.seed)  # the benchmark's draws: the pool, then the starting labels
                    pool = sample_pool(claims, TESTBED_SPECS["truthfulQA"], size, rng, source)
                    try:
                        predictions[name] = predicted_steady_state(pool, layout, tokens, capacity, args.block_size, mode, args.K, rng)
                    except ValueError as exc:  # a prompt longer than the whole cache
                        raise UserError(f"--capacities {capacity} at pool {size}: {exc}; give a larger capacity") from None
                shares = saving_shares(predictions)
                results["steady_state"][size][capacity] = {"patterns": {n: dataclasses.asdict(p) for n, p in predictions.items()},
                                                           "saving": shares}
                print_prediction(size, capacity, args.block_size, predictions, shares)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.json, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def print_prediction(size: int, capacity: int, block_size: int, predictions: dict[str, SteadyStatePrediction],
                     shares: dict[str, Optional[float]]) -> None:
    print(f"\npool {size}, KV cache {capacity:,} tokens in {block_size}-token blocks: per iteration after the first scoring, "
          "median (IQR)")
    print("| pattern | pool scores | engine-computed tokens | mean tokens | tokens per pool score | requests | first scoring, computed | hit rate |")
    print("|---|---|---|---|---|---|---|---|")
    for name, p in predictions.items():
        tokens, scores, requests = (p.per_iteration[k] for k in ("computed_tokens", "pool_scores", "requests"))
        print(f"| {name} | {scores['median']:.1f} ({scores['p25']:.1f}–{scores['p75']:.1f}) | {tokens['median']:,.0f} "
              f"({tokens['p25']:,.0f}–{tokens['p75']:,.0f}) | {p.computed_tokens_per_iteration:,.0f} | "
              f"{'—' if p.computed_tokens_per_pool_score is None else format(p.computed_tokens_per_pool_score, ',.0f')} | "
              f"{requests['median']:,.0f} | {p.first_scoring_computed_tokens:,} "
              f"| {p.hit_rate:.1%} |")
    shown = {k: ("—" if v is None else f"{v:.2f}×") for k, v in shares.items()}
    print(f"saving per iteration (mean tokens): memoisation {shown['memoisation']} × tree {shown['tree']} = {shown['total']}; "
          f"tree-volatility over tree {shown['volatility']}")


def print_pool(size: int, entry: dict) -> None:
    trie = entry["trie_tokens"]
    print(f"\npool {size}: one pool score sends {entry['naive_tokens'] / 1e6:.3f}M tokens; trie "
          f"{trie['reference'] / 1e6:.3f}M in the reference order, {trie['ours'] / 1e6:.3f}M in ours "
          f"({trie['reference'] / trie['ours']:.1f}× fewer)")
    print("| KV cache (tokens) | hit rate, reference | hit rate, ours | computed per score, reference | computed per score, ours |")
    print("|---|---|---|---|---|")
    for capacity, cell in entry["capacities"].items():
        ref, ours = cell["reference"], cell["ours"]
        print(f"| {capacity:,} | {ref['hit_rate']:.1%} | {ours['hit_rate']:.1%} | "
              f"{ref['computed_tokens_per_score'] / 1e6:.3f}M | {ours['computed_tokens_per_score'] / 1e6:.3f}M |")


if __name__ == "__main__":
    exit_process(main())
