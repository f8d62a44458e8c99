"""How far llama.cpp's prompt-cache reuse moves scores, against deterministic mode (no reuse).

Scores one pool's leave-one-out prompts cold with no cache, then with the cache on after the engine has
seen a neighbouring labelling (one label flipped): what a search step looks like to the engine.

    python scripts/measure_cache_drift.py --testbed truthfulQA --data-dir ../shared/data/icm --pool 8
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from core.process_exit import exit_process
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.cli.cli_numbers import Bounded
from src.config.run_config import PromptConfig
from src.pipeline.label_scores import label_logodds
from src.prompts.prompts import leave_one_out_prompts
from src.search.annealing import seed_claims
from src.data.testbeds import TESTBED_SPECS, TESTBEDS, load_testbed_claims, sample_pool

LABEL_STYLE, TOKEN_MATCH = PromptConfig().label_style, PromptConfig().token_match  # what a default run uses


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", default="demo", choices=[t for t in TESTBEDS if t != "custom"])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--pool", type=int, default=8, action=Bounded, at_least=2,
                        help="claims in the pool, all labelled (even: half True, half False)")
    parser.add_argument("--seed", type=int, default=0, action=Bounded, at_least=0)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(lambda: measure(build_parser().parse_args(argv)))


def measure(args: argparse.Namespace) -> int:
    if args.pool % 2:
        raise UserError(f"--pool {args.pool} must be even: its claims get random labels, half True and half False")
    claims, source, _ = load_testbed_claims(args.testbed, args.data_dir, None, True)
    rng = random.Random(args.seed)
    pool = list(seed_claims(sample_pool(claims, TESTBED_SPECS[args.testbed], args.pool, rng, source), args.pool, rng).values())
    neighbour = list(pool)
    neighbour[len(pool) // 2] = pool[len(pool) // 2].relabelled(pool[len(pool) // 2].label ^ 1)
    prompts = leave_one_out_prompts(pool, LABEL_STYLE, "reference")
    settings = Settings()

    with ModelAPI(deterministic=True, settings=settings, show_progress=False) as api:
        exact = api.next_token_logprobs(prompts)
    with ModelAPI(deterministic=False, settings=settings, show_progress=False) as api:
        api.next_token_logprobs(leave_one_out_prompts(neighbour, LABEL_STYLE, "reference"))
        before = api.stats.computed_tokens
        cached = api.next_token_logprobs(prompts)
        computed, sent = api.stats.computed_tokens - before, api.stats.prompt_tokens
    logprob_gaps = [abs(a - dict(c)[t]) for e, c in zip(exact, cached) for t, a in e if t in dict(c)]
    score_gaps = [abs(label_logodds(e, TOKEN_MATCH) - label_logodds(c, TOKEN_MATCH)) for e, c in zip(exact, cached)]
    print(f"{args.testbed}, pool {args.pool}: {len(prompts)} prompts")
    print(f"  label log-odds  |cached - deterministic|: max {max(score_gaps):.4f}  mean {np.mean(score_gaps):.4f} nats")
    print(f"  top-20 logprobs |cached - deterministic|: max {max(logprob_gaps):.4f}  mean {np.mean(logprob_gaps):.4f} nats")
    print(f"  labels that flip sign: {sum((label_logodds(e, TOKEN_MATCH) > 0) != (label_logodds(c, TOKEN_MATCH) > 0) for e, c in zip(exact, cached))}")
    print(f"  tokens computed with the cache on, after the neighbour: {computed} (of {sent // 2} per pool score)")
    return 0


if __name__ == "__main__":
    exit_process(main())
