"""ICM.py's command line: its flags, whose defaults are RunConfig's, and the checks of a config's values that
name the flag to fix.

Each flag's ``dest`` is its setting's name in run_config (the test tests/test_run_config.py holds the parser's
defaults to the dataclasses').
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from src.cli.cli_errors import OneLineParser
from src.cli.cli_numbers import Bounded, check_bounds
from src.config.run_config import RunConfig, UsageError
from src.data.record_files import parse_columns
from src.data.testbeds import TESTBEDS
from src.pipeline.label_scores import LABEL_ABSENT_CHOICES
from src.prompts.prompts import PROMPT_LAYOUTS

LABELLERS = ("icm", "random", "bootstrap", "bootstrap-consistency")


def build_parser() -> argparse.ArgumentParser:
    default = RunConfig().flat()  # each setting's one default
    parser = OneLineParser(description="Label a dataset with ICM, without human labels.")
    # The reference code's flags and defaults.
    parser.add_argument("--alpha", type=float, default=default["alpha"], action=Bounded, above=0,
                        help="weight of mutual predictability in the energy (above 0: at 0 the model is ignored, below it "
                             "the search rewards labels the model disagrees with)")
    parser.add_argument("--seed", type=int, default=default["seed"], action=Bounded, at_least=0,
                        help="random seed (0 or more: Python seeds -n and n alike)")
    parser.add_argument("--testbed", default=default["testbed"], choices=TESTBEDS)
    parser.add_argument("--model", default=default["model"],
                        help="model name on a server route, or a .gguf path on the embedded route "
                             "(default: the server's model, or the bundled SmolLM2-135M)")
    parser.add_argument("--batch_size", type=int, default=default["batch_size"], action=Bounded, above=0,
                        help="claims in the pool to label")
    parser.add_argument("--num_seed", type=int, default=default["num_seed"], action=Bounded, at_least=0,
                        help="claims that start with random labels (even; 0: the search starts with none labelled)")
    parser.add_argument("--K", type=int, default=default["K"], action=Bounded, at_least=0,
                        help="search iterations (0: only score and repair the seed labels)")
    parser.add_argument("--consistency_fix_K", type=int, default=default["consistency_fix_K"], action=Bounded, at_least=0,
                        help="rounds of the consistency repair (0: no repair)")
    parser.add_argument("--decay", type=float, default=default["decay"], action=Bounded, above=0, at_most=1,
                        help="decay rate of the exp schedule, in (0, 1] (1: the temperature stays at --initial_T)")
    parser.add_argument("--initial_T", type=float, default=default["initial_T"], action=Bounded, above=0,
                        help="starting temperature (above 0)")
    parser.add_argument("--final_T", type=float, default=default["final_T"], action=Bounded, above=0,
                        help="lowest temperature (above 0, at most --initial_T)")
    parser.add_argument("--scheduler", default=default["scheduler"], choices=("log", "exp"))
    # Ours.
    parser.add_argument("--data-dir", type=Path, default=default["data_dir"], help="folder with the paper's JSON files")
    parser.add_argument("--data", type=Path, default=default["data"],
                        help="one file of records (needed for --testbed custom): a JSON list (.json), JSON Lines (.jsonl), "
                             "CSV (.csv), Parquet (.parquet) or a folder written by Dataset.save_to_disk")
    parser.add_argument("--columns", default=default["columns"], metavar="FIELD=COLUMN,...",
                        help="--data's column names for the claim fields, e.g. question=q,choice=answer_text,label=is_true")
    parser.add_argument("--output-dir", type=Path, default=default["output_dir"],
                        help="default: results/<testbed>-K<K>-bs<batch>-seed<seed>")
    parser.add_argument("--overwrite", action="store_true", default=default["overwrite"],
                        help="replace the run in --output-dir (its response cache is kept)")
    parser.add_argument("--deterministic", action="store_true", default=default["deterministic"],
                        help="no prompt-cache reuse on the embedded route: slower, bit-identical scores")
    parser.add_argument("--label-style", default=default["label_style"], choices=("space-in-label", "reference"),
                        help="where the space before True/False goes (reference: at the end of the template)")
    parser.add_argument("--token-match", default=default["token_match"], choices=("whole", "substring"),
                        help="which tokens count as True/False (substring: the reference's rule)")
    parser.add_argument("--no-gold-consistency", action="store_true", default=default["no_gold_consistency"],
                        help="don't derive consistency keys from gold labels (TruthfulQA, preference testbeds)")
    parser.add_argument("--allow-both-false", action="store_true", default=default["allow_both_false"],
                        help="let the consistency fix try labelling both claims of a contradiction False")
    parser.add_argument("--label-logprobs", default=default["label_logprobs"], choices=("auto", "topk"),
                        help="auto: exact label logprobs where the server offers them (vLLM >= 0.33); topk: the top-20 as in the reference")
    parser.add_argument("--prompt-layout", default=default["prompt_layout"], choices=PROMPT_LAYOUTS,
                        help="order of the demonstrations in each prompt. tree (default): prompts share prefixes, so the engine "
                             "computes about N·L·log2(N) tokens per pool score instead of N²L/2; it moves scores no more than "
                             "another random pool order does (scripts/measure_order_sensitivity.py). reference: pool order. "
                             "tree-volatility (an experiment): the tree with the claims whose labels changed most placed last")
    parser.add_argument("--rng-draws", default=default["rng_draws"], choices=("reference", "minimal"),
                        help="reference: also take the random draws of the reference's per-evaluation pair shuffle, so a "
                             "seed follows the reference's path; minimal: only the draws that decide something")
    parser.add_argument("--repair-loop", default=default["repair_loop"], choices=("reference", "stop-at-first-failure"),
                        help="reference: once a repair round has helped, keep trying rounds until --consistency_fix_K "
                             "(the reference never resets its flag); stop-at-first-failure: stop at the first round that doesn't help")
    parser.add_argument("--post-flip-fix-K", type=int, default=default["post_flip_fix_K"], action=Bounded, at_least=0,
                        help="repair rounds after a proposed flip (default: --consistency_fix_K; the reference hard-codes 10; "
                             "0: none)")
    parser.add_argument("--mp-reduce", default=default["mp_reduce"], choices=("mean", "sum"),
                        help="mutual predictability as the mean of the label log-odds (reference code) or their sum (paper)")
    parser.add_argument("--label-absent", default=default["label_absent"], choices=LABEL_ABSENT_CHOICES,
                        help="an answer whose top-k holds neither label token: stop the run (default; it says nothing about "
                             "the label), or floor: score it 0, as the reference does")
    parser.add_argument("--labeller", default=default["labeller"], choices=LABELLERS,
                        help="who labels the pool: icm (the search; default), or a cheap baseline on the same pool and "
                             "model: random, bootstrap (each round relabels every claim by its leave-one-out prediction), "
                             "bootstrap-consistency (the same, with the consistency repair after each round). The baselines "
                             "label the whole pool from random labels and ignore --K, --num_seed and the temperatures")
    parser.add_argument("--bootstrap-rounds", type=int, default=default["bootstrap_rounds"], action=Bounded, at_least=1,
                        help="round limit of the bootstrap labellers (they stop earlier once no label changes)")
    parser.add_argument("--true-share", type=float, default=default["true_share"], action=Bounded, at_least=0, at_most=1,
                        help="imbalance stress: draw the pool with exactly this share of gold-True claims, in [0, 1]. It "
                             "reads the gold labels to subsample (run.json records that); not under --paper-mode")
    parser.add_argument("--pool-seed", type=int, default=default["pool_seed"], action=Bounded, at_least=0,
                        help="draw the pool with this seed (0 or more) instead of --seed, so runs of several --seed label the same pool")
    parser.add_argument("--paper-mode", action="store_true", default=default["paper_mode"],
                        help="every behaviour of the reference code that changes results; see the README's paper-mode table")
    route = parser.add_mutually_exclusive_group()
    route.add_argument("--use-vllm", dest="use_vllm", action="store_const", const=True, default=default["use_vllm"],
                       help="score on the vLLM server at VLLM_BASE_URL (the default when it is set)")
    route.add_argument("--no-vllm", dest="use_vllm", action="store_const", const=False,
                       help="rollback: score on the hosted API at LLAMA_API_BASE even when VLLM_BASE_URL is set")
    parser.add_argument("--requests-per-minute", type=float, default=default["requests_per_minute"], action=Bounded, above=0,
                        help="hosted API request limit (API_REQUESTS_PER_MINUTE; above 0)")
    parser.add_argument("--tokens-per-minute", type=float, default=default["tokens_per_minute"], action=Bounded, above=0,
                        help="hosted API prompt-token limit (API_TOKENS_PER_MINUTE; above 0)")
    parser.add_argument("--num-batches", type=int, default=default["num_batches"], action=Bounded, at_least=1,
                        help="split the data into this many disjoint pools of whole groups (one job each; 1: the whole data "
                             "as one pool); --batch_size is then unused")
    parser.add_argument("--batch-index", type=int, default=default["batch_index"], action=Bounded, at_least=0,
                        help="which of the --num-batches pools this job labels (0-based)")
    parser.add_argument("--resume", type=Path, default=default["resume"], metavar="OUT",
                        help="continue the run in OUT from its checkpoint, with the settings it was started with")
    parser.add_argument("--cache-dir", type=Path, default=default["cache_dir"],
                        help="where the response cache lives (default: the output dir); share it between runs")
    parser.add_argument("--no-cache", action="store_true", default=default["no_cache"], help="no response cache")
    parser.add_argument("--secrets", type=Path, default=default["secrets"], help="settings file (default: SECRETS in the repo)")
    parser.add_argument("--no-progress", action="store_true", default=default["no_progress"], help="no progress bars")
    return parser


def flag_names() -> dict[str, str]:
    """Each setting's command-line flag, as the parser spells it."""
    return {action.dest: action.option_strings[0] for action in build_parser()._actions if action.option_strings}


def passed_flags(argv: Optional[Sequence[str]]) -> set[str]:
    """Which settings were given on the command line (as opposed to left at their defaults)."""
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def validate(config: RunConfig) -> None:
    """Refuse settings that are out of range or don't go together (UserError naming the flag). Also for the
    settings a resumed run read back, which no parser checked."""
    check_bounds(build_parser(), argparse.Namespace(**config.flat()))
    data = config.data
    checks = [
        (data.num_seed % 2 == 0, f"--num_seed {data.num_seed} must be even and not negative (half True, half False)"),
        (data.num_seed <= data.batch_size, f"--num_seed {data.num_seed} is larger than --batch_size {data.batch_size}"),
        (config.search.final_T <= config.search.initial_T,
         f"--final_T {config.search.final_T} is above --initial_T {config.search.initial_T}: the temperature falls from "
         "the first to the second"),
    ]
    if (data.num_batches is None) != (data.batch_index is None):
        raise UsageError("--num-batches and --batch-index go together: pass both, or neither")
    if data.columns is not None:
        if data.data is None:
            raise UsageError("--columns names the columns of --data FILE: pass --data, or drop --columns")
        parse_columns(data.columns)
    pool_options = [name for name, value in (("--true-share", data.true_share), ("--pool-seed", data.pool_seed))
                    if value is not None]
    if data.num_batches is not None and pool_options:
        given = " and ".join(pool_options)
        raise UsageError(f"{given} {'draw' if len(pool_options) > 1 else 'draws'} one pool of --batch_size; "
                         f"--num-batches splits the data into shards instead: drop one of them")
    if data.num_batches is not None:
        checks = [c for c in checks if "--batch_size" not in c[1]]  # the shard decides the pool size
    if config.search.labeller != "icm":
        checks = [c for c in checks if "--num_seed" not in c[1]]  # a baseline labels the whole pool: it is unused
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def recorded_setting_problem(settings: Mapping[str, Any]) -> Optional[str]:
    """What is wrong with a run's recorded settings (run.json) that the command line would have refused: a value
    outside its flag's choices, or a number that is not a finite number of the flag's kind. None when nothing is.
    A resume reads these instead of flags, so they get the same checks before anything runs."""
    for action in build_parser()._actions:
        if action.dest not in settings or not action.option_strings:
            continue
        value = settings[action.dest]
        if action.choices is not None and value not in action.choices:
            return f"{action.dest} {value!r} is not one of {', '.join(map(str, action.choices))}"
        if action.type in (int, float) and value is not None:
            kinds = (int,) if action.type is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
                kind = "a whole number" if action.type is int else "a finite number"
                return f"{action.dest} {value!r} is not {kind}"
    return None
