"""Run the Internal Coherence Maximization search on one testbed.

    python src/experiments/ICM.py --testbed demo --batch_size 8 --num_seed 4 --K 20
    cd src/experiments && python ICM.py --testbed truthfulQA --data-dir ../../../shared/data/icm ...
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from core.crash_points import armed as crash_points_armed, maybe_crash
from core.interrupts import WaitInterrupted
from core.llm_api.base_llm import ScoringError
from core.llm_api.faults import PromptTooLong
from core.llm_api.llm import RouteUnavailable
from core.llm_api.model_files import ModelFileMissing
from core.llm_api.redaction import scrub_credentials
from core.llm_api.response_cache import CacheUnusable
from core.llm_api.settings import SettingsError, load_settings
from core.process_exit import exit_process
from src.run_directory.checkpoint import (
    CheckpointError,
    check_resumed_pool,
    load_checkpoint,
    load_run,
    new_run_id,
    pool_fingerprint,
    restore_state,
    rewrite_run,
    save_checkpoint,
    save_run,
    trim_log,
)
from src.cli.cli_errors import OneLineParser, UserError, network_error_line
from src.cli.cli_numbers import Bounded, check_bounds
from src.data.data_provenance import data_record
from src.pipeline.label_scores import LABEL_ABSENT_CHOICES, LOW_LABEL_MASS, low_mass_warning, median
from src.run_directory.output_paths import data_files, refuse_writing_over
from src.prompts.prompts import PROMPT_LAYOUTS
from src.data.record_files import parse_columns
from src.run_directory.run_directory import CHECKPOINT_FILE, LABELS_FILE, LOG_FILE, RUN_FILE, SUMMARY_FILE, RunDirectory
from src.run_directory.run_lock import OutputDirLocked, OutputDirUnusable
from src.run_directory.run_outputs import (
    IterationLog,
    OutputDirInUse,
    OutputWriteError,
    discard_unstarted_run,
    jsonl,
    label_rows,
    prepare_output_dir,
)
from src.search.annealing import ICMSearch, SearchSettings, SearchState, seed_claims
from src.cli.stop_signals import GracefulStop, SearchStopped
from src.data.testbeds import TESTBED_SPECS, TESTBEDS, DataError, load_testbed_claims, sample_pool, shard_pool
from src.pipeline.pipeline import (
    ScoringOptions,
    ScoringPipeline,
    refuse_claims_longer_than_the_context,
    show_progress_bars,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


class UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Label a dataset with ICM, without human labels.")
    # The reference code's flags and defaults.
    parser.add_argument("--alpha", type=float, default=30.0, action=Bounded, above=0,
                        help="weight of mutual predictability in the energy (above 0: at 0 the model is ignored, below it "
                             "the search rewards labels the model disagrees with)")
    parser.add_argument("--seed", type=int, default=27565976, action=Bounded, at_least=0,
                        help="random seed (0 or more: Python seeds -n and n alike)")
    parser.add_argument("--testbed", default="gsm8k", choices=TESTBEDS)
    parser.add_argument("--model", default=None,
                        help="model name on a server route, or a .gguf path on the embedded route "
                             "(default: the server's model, or the bundled SmolLM2-135M)")
    parser.add_argument("--batch_size", type=int, default=256, action=Bounded, above=0, help="claims in the pool to label")
    parser.add_argument("--num_seed", type=int, default=8, action=Bounded, at_least=0,
                        help="claims that start with random labels (even; 0: the search starts with none labelled)")
    parser.add_argument("--K", type=int, default=3000, action=Bounded, at_least=0,
                        help="search iterations (0: only score and repair the seed labels)")
    parser.add_argument("--consistency_fix_K", type=int, default=10, action=Bounded, at_least=0,
                        help="rounds of the consistency repair (0: no repair)")
    parser.add_argument("--decay", type=float, default=0.99, action=Bounded, above=0, at_most=1,
                        help="decay rate of the exp schedule, in (0, 1] (1: the temperature stays at --initial_T)")
    parser.add_argument("--initial_T", type=float, default=10.0, action=Bounded, above=0, help="starting temperature (above 0)")
    parser.add_argument("--final_T", type=float, default=0.01, action=Bounded, above=0,
                        help="lowest temperature (above 0, at most --initial_T)")
    parser.add_argument("--scheduler", default="log", choices=("log", "exp"))
    # Ours.
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the paper's JSON files")
    parser.add_argument("--data", type=Path, default=None,
                        help="one file of records (needed for --testbed custom): a JSON list (.json), JSON Lines (.jsonl), "
                             "CSV (.csv), Parquet (.parquet) or a folder written by Dataset.save_to_disk")
    parser.add_argument("--columns", default=None, metavar="FIELD=COLUMN,...",
                        help="--data's column names for the claim fields, e.g. question=q,choice=answer_text,label=is_true")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: results/<testbed>-K<K>-bs<batch>-seed<seed>")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --output-dir (its response cache is kept)")
    parser.add_argument("--deterministic", action="store_true",
                        help="no prompt-cache reuse on the embedded route: slower, bit-identical scores")
    parser.add_argument("--label-style", default="space-in-label", choices=("space-in-label", "reference"),
                        help="where the space before True/False goes (reference: at the end of the template)")
    parser.add_argument("--token-match", default="whole", choices=("whole", "substring"),
                        help="which tokens count as True/False (substring: the reference's rule)")
    parser.add_argument("--no-gold-consistency", action="store_true",
                        help="don't derive consistency keys from gold labels (TruthfulQA, preference testbeds)")
    parser.add_argument("--allow-both-false", action="store_true",
                        help="let the consistency fix try labelling both claims of a contradiction False")
    parser.add_argument("--label-logprobs", default="auto", choices=("auto", "topk"),
                        help="auto: exact label logprobs where the server offers them (vLLM >= 0.33); topk: the top-20 as in the reference")
    parser.add_argument("--prompt-layout", default="tree", choices=PROMPT_LAYOUTS,
                        help="order of the demonstrations in each prompt. tree (default): prompts share prefixes, so the engine "
                             "computes about N·L·log2(N) tokens per pool score instead of N²L/2; it moves scores no more than "
                             "another random pool order does (scripts/measure_order_sensitivity.py). reference: pool order")
    parser.add_argument("--rng-draws", default="reference", choices=("reference", "minimal"),
                        help="reference: also take the random draws of the reference's per-evaluation pair shuffle, so a "
                             "seed follows the reference's path; minimal: only the draws that decide something")
    parser.add_argument("--repair-loop", default="reference", choices=("reference", "stop-at-first-failure"),
                        help="reference: once a repair round has helped, keep trying rounds until --consistency_fix_K "
                             "(the reference never resets its flag); stop-at-first-failure: stop at the first round that doesn't help")
    parser.add_argument("--post-flip-fix-K", type=int, default=None, action=Bounded, at_least=0,
                        help="repair rounds after a proposed flip (default: --consistency_fix_K; the reference hard-codes 10; "
                             "0: none)")
    parser.add_argument("--mp-reduce", default="mean", choices=("mean", "sum"),
                        help="mutual predictability as the mean of the label log-odds (reference code) or their sum (paper)")
    parser.add_argument("--label-absent", default="stop", choices=LABEL_ABSENT_CHOICES,
                        help="an answer whose top-k holds neither label token: stop the run (default; it says nothing about "
                             "the label), or floor: score it 0, as the reference does")
    parser.add_argument("--paper-mode", action="store_true",
                        help="every behaviour of the reference code that changes results; see the README's paper-mode table")
    route = parser.add_mutually_exclusive_group()
    route.add_argument("--use-vllm", dest="use_vllm", action="store_const", const=True, default=None,
                       help="score on the vLLM server at VLLM_BASE_URL (the default when it is set)")
    route.add_argument("--no-vllm", dest="use_vllm", action="store_const", const=False,
                       help="rollback: score on the hosted API at LLAMA_API_BASE even when VLLM_BASE_URL is set")
    parser.add_argument("--requests-per-minute", type=float, default=None, action=Bounded, above=0,
                        help="hosted API request limit (API_REQUESTS_PER_MINUTE; above 0)")
    parser.add_argument("--tokens-per-minute", type=float, default=None, action=Bounded, above=0,
                        help="hosted API prompt-token limit (API_TOKENS_PER_MINUTE; above 0)")
    parser.add_argument("--num-batches", type=int, default=None, action=Bounded, at_least=1,
                        help="split the data into this many disjoint pools of whole groups (one job each; 1: the whole data "
                             "as one pool); --batch_size is then unused")
    parser.add_argument("--batch-index", type=int, default=None, action=Bounded, at_least=0,
                        help="which of the --num-batches pools this job labels (0-based)")
    parser.add_argument("--resume", type=Path, default=None, metavar="OUT",
                        help="continue the run in OUT from its checkpoint, with the settings it was started with")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the response cache lives (default: the output dir); share it between runs")
    parser.add_argument("--no-cache", action="store_true", help="no response cache")
    parser.add_argument("--secrets", type=Path, default=None, help="settings file (default: SECRETS in the repo)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def validate(args: argparse.Namespace) -> None:
    check_bounds(build_parser(), args)  # each number's own range, also for the settings a resumed run read back
    checks = [
        (args.num_seed % 2 == 0, f"--num_seed {args.num_seed} must be even and not negative (half True, half False)"),
        (args.num_seed <= args.batch_size, f"--num_seed {args.num_seed} is larger than --batch_size {args.batch_size}"),
        (args.final_T <= args.initial_T, f"--final_T {args.final_T} is above --initial_T {args.initial_T}: the temperature falls from the first to the second"),
    ]
    if (args.num_batches is None) != (args.batch_index is None):
        raise UsageError("--num-batches and --batch-index go together: pass both, or neither")
    if args.columns is not None:
        if args.data is None:
            raise UsageError("--columns names the columns of --data FILE: pass --data, or drop --columns")
        parse_columns(args.columns)
    if args.num_batches is not None:
        checks = [c for c in checks if "--batch_size" not in c[1]]  # the shard decides the pool size
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


# What --paper-mode sets: every behaviour of the reference code that changes results (README, "Paper mode").
PAPER_MODE = {
    "label_style": "reference",
    "token_match": "substring",
    "label_logprobs": "topk",
    "rng_draws": "reference",
    "repair_loop": "reference",
    "post_flip_fix_K": 10,
    "prompt_layout": "reference",
    "mp_reduce": "mean",
    "allow_both_false": False,
    "no_gold_consistency": False,
    "label_absent": "floor",
}
# Runs recorded before a setting existed behaved like this; a resume keeps that behaviour.
SETTINGS_BEFORE_THEY_EXISTED = {
    "rng_draws": "minimal", "repair_loop": "stop-at-first-failure", "post_flip_fix_K": None, "mp_reduce": "mean",
    "paper_mode": False, "prompt_layout": "reference", "label_absent": "floor", "columns": None,
}


def flag_names() -> dict[str, str]:
    """Each setting's command-line flag, for messages that name it."""
    return {action.dest: action.option_strings[0] for action in build_parser()._actions if action.option_strings}


def apply_paper_mode(args: argparse.Namespace, passed: set[str]) -> argparse.Namespace:
    """Under --paper-mode, the reference's behaviour for every setting in PAPER_MODE; a flag that asks for
    something else is refused by name rather than silently overridden."""
    if not args.paper_mode:
        return args
    flags = flag_names()
    for name, value in PAPER_MODE.items():
        if name in passed and getattr(args, name) != value:
            flag = flags[name]
            if isinstance(value, bool):
                raise UsageError(f"{flag} contradicts --paper-mode, which follows the reference (without {flag}); drop one of the two")
            raise UsageError(f"{flag} {getattr(args, name)} contradicts --paper-mode, which sets {flag} {value}; drop one of the two")
    return argparse.Namespace(**{**vars(args), **PAPER_MODE})


# Flags that may differ when a run is resumed: they don't change what the search computes.
CHANGEABLE_ON_RESUME = {"K", "no_progress", "secrets", "data_dir", "data", "columns", "cache_dir", "no_cache", "resume",
                        "output_dir", "overwrite"}
# Flags that are about this invocation, not the run, and so are not recorded with it.
NOT_RECORDED = {"resume", "output_dir", "overwrite", "no_progress", "secrets"}


def run_settings(args: argparse.Namespace) -> dict:
    """The run's settings as JSON values, recorded in the checkpoint and the summary, and whether its
    consistency key came from the gold labels."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in NOT_RECORDED}
    return {**settings, "consistency_key_from_gold": consistency_key_from_gold(args)}


def consistency_key_from_gold(args: argparse.Namespace) -> bool:
    return TESTBED_SPECS[args.testbed].key_from_gold and not args.no_gold_consistency


def passed_flags(argv: Optional[Sequence[str]]) -> set[str]:
    """Which settings were given on the command line (as opposed to left at their defaults)."""
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def resumed_args(args: argparse.Namespace, passed: set[str]) -> argparse.Namespace:
    """The settings the run was started with, plus the few that may change on resume."""
    record = load_run(RunDirectory(args.resume))
    saved = {**SETTINGS_BEFORE_THEY_EXISTED, **record["settings"]}
    flags = flag_names()
    for name in sorted(passed - CHANGEABLE_ON_RESUME):
        now = run_settings(args).get(name)
        if name in saved and saved[name] != now:
            flag = flags[name]
            raise UsageError(f"--resume {args.resume}: the run was started with {flag} {saved[name]!r}, not {now!r}; "
                             f"drop {flag} to resume it, or start a new run with --output-dir")
    merged = argparse.Namespace(**{**vars(args), **{k: v for k, v in saved.items() if k not in passed or k not in CHANGEABLE_ON_RESUME}})
    # The settings hold paths as typed, relative to where the run started; the run record's "data" has them resolved.
    resolved = record.get("data") if isinstance(record.get("data"), dict) else {}
    for name in ("data_dir", "data"):
        if name not in passed and isinstance(resolved.get(name), str):
            setattr(merged, name, resolved[name])
    for name in ("data_dir", "data", "cache_dir"):
        value = getattr(merged, name)
        setattr(merged, name, Path(value) if isinstance(value, str) else value)
    merged.output_dir = args.resume
    return merged


def default_output_dir(args: argparse.Namespace) -> Path:
    if args.num_batches is not None:
        return REPO_ROOT / "results" / f"{args.testbed}-K{args.K}-seed{args.seed}-shard{args.batch_index}of{args.num_batches}"
    return REPO_ROOT / "results" / f"{args.testbed}-K{args.K}-bs{args.batch_size}-seed{args.seed}"


def draw_pool(args: argparse.Namespace) -> tuple[list[dict], random.Random, str]:
    """The pool this run labels, the RNG the search goes on with, and where the claims came from."""
    columns = parse_columns(args.columns) if args.columns else None
    claims, source, from_test = load_testbed_claims(args.testbed, args.data_dir, args.data, not args.no_gold_consistency,
                                                    columns)
    if from_test:
        print(f"note: no train split for {args.testbed}; the pool is drawn from {source}. "
              f"Exclude {LABELS_FILE}'s consistency_ids when you evaluate on that file.", file=sys.stderr)
    if args.num_batches is None:
        rng = random.Random(args.seed)
        pool = sample_pool(claims, TESTBED_SPECS[args.testbed], args.batch_size, rng, source)
        if args.num_seed > len(pool):
            raise UsageError(f"--num_seed {args.num_seed} is larger than the pool: whole consistency groups of {source} "
                             f"fill only {len(pool)} of --batch_size {args.batch_size}; lower --num_seed or raise --batch_size")
    else:
        pool = shard_pool(claims, TESTBED_SPECS[args.testbed], args.num_batches, args.batch_index, args.seed, source)
        rng = random.Random(f"{args.seed}:{args.batch_index}")  # each shard's own seed labels and search
        if args.num_seed > len(pool):
            raise UsageError(f"--num_seed {args.num_seed} is larger than this shard's {len(pool)} claims: use fewer --num-batches")
    return pool, rng, source


def start_or_resume(args: argparse.Namespace, files: RunDirectory, state: SearchState, rng: random.Random,
                    source: str) -> tuple[SearchState, random.Random, dict]:
    """A new run's record (run.json), or a resumed run's state, RNG and trimmed log; and the run's record."""
    out = files.path
    files.remove_leftover_temporaries()
    data = data_record(args.data_dir, args.data, source)
    if not args.resume:
        prepare_output_dir(files, args.overwrite)
        return state, rng, save_run(files, run_settings(args), pool_fingerprint(state.claims), new_run_id(), data)
    run = load_run(files)
    check_resumed_pool(run, state.claims, out, source)
    saved = load_checkpoint(files, run)
    if saved is not None:
        state, rng = restore_state(saved, state.claims, files.checkpoint_file)
    if args.K < state.iteration:
        raise UsageError(f"--K {args.K} is below the {state.iteration} iterations this run has done: "
                         f"pass --K {state.iteration} or more, or leave --K out")
    trim_log(files, state.iteration)
    if run["settings"].get("K") != args.K or run.get("data") != data:
        run["settings"]["K"] = args.K  # the run's record says how long the run is meant to be
        run["data"] = data  # and where its data is now (the pool fingerprint has checked it is the same pool)
        rewrite_run(files, run)
    print(f"resuming {out} at iteration {state.iteration} of {args.K}", file=sys.stderr)
    return state, rng, run


def search_settings(args: argparse.Namespace) -> SearchSettings:
    return SearchSettings(
        alpha=args.alpha, K=args.K, consistency_fix_K=args.consistency_fix_K, decay=args.decay,
        initial_T=args.initial_T, final_T=args.final_T, scheduler=args.scheduler,
        allow_both_false=args.allow_both_false, rng_draws=args.rng_draws, repair_loop=args.repair_loop,
        post_flip_fix_K=args.post_flip_fix_K,
    )


def scoring_options(args: argparse.Namespace, out: Path) -> ScoringOptions:
    return ScoringOptions(
        model=args.model, use_vllm=args.use_vllm, deterministic=args.deterministic,
        exact_label_logprobs=args.label_logprobs == "auto", show_progress=show_progress_bars(args.no_progress),
        label_style=args.label_style, token_match=args.token_match, prompt_layout=args.prompt_layout,
        mp_reduce=args.mp_reduce, external_top_k=20 if args.paper_mode else None, label_absent=args.label_absent,
        requests_per_minute=args.requests_per_minute, tokens_per_minute=args.tokens_per_minute,
        cache_dir=None if args.no_cache else (args.cache_dir or out),
    )


def refuse_writing_over_data(args: argparse.Namespace, out: Path) -> None:
    """The run's folder must not hold its data (--overwrite would replace a data file named like a run file), and
    the response cache must land neither on the data nor on one of the run's own files."""
    reads = data_files(args.data_dir, args.data)
    refuse_writing_over(out, "--resume" if args.resume else "--output-dir", reads, folder=True)
    if not args.no_cache and args.cache_dir is not None:
        files = RunDirectory(out)
        own = [(f"the run's {path.name}", path) for path in files.own_files() if path != files.cache_file]
        refuse_writing_over(args.cache_dir, "--cache-dir", reads + own, folder=False)


def run(args: argparse.Namespace, out: Path) -> Path:
    """The search in ``out``, whose RunLock the caller holds."""
    validate(args)
    refuse_writing_over_data(args, out)  # again with a resumed run's own data
    pool, rng, source = draw_pool(args)
    route_settings = _settings(args)
    started = time.time()
    files = RunDirectory(out, before_rename=crash_before_rename if crash_points_armed() else None)
    owns_the_folder = False  # a refused start or resume leaves the folder as it found it
    with GracefulStop() as stop:
        try:
            state, rng, run_record = start_or_resume(args, files, SearchState(claims=seed_claims(pool, args.num_seed, rng)), rng, source)
            owns_the_folder = True
            try:
                pipeline = ScoringPipeline(scoring_options(args, out), route_settings)
            except WaitInterrupted:
                print("stopped while waiting for the server, before any scoring: run the same command again", file=sys.stderr)
                raise stop.stopped() from None
            with pipeline:
                model_api, scorer = pipeline.model_api, pipeline.scorer
                refuse_claims_longer_than_the_context(pool, model_api, args.label_style, source)
                where = model_api.describe().get("endpoint")
                print(f"route: {model_api.route_name}{f' at {where}' if where else ''}  model: {model_api.model}  "
                      f"pool: {len(pool)} claims from {source}", file=sys.stderr)
                if consistency_key_from_gold(args):
                    print(f"note: --testbed {args.testbed} derives its consistency key from the gold labels (as the "
                          "reference does), so these labels are not unsupervised: don't report them as such. "
                          "--no-gold-consistency keeps gold out of the search", file=sys.stderr)
                search = ICMSearch(scorer, search_settings(args), rng, state)
                checkpoint = Checkpointer(files, run_record, search, rng)
                stopped_by = _search_with_log(search, files, args, stop, checkpoint)
                if state.metric is not None:
                    scores, stopped_by = _final_scores(scorer, state, stopped_by, stop)
                    unwritten, failure = _write_results(files, args, state, search, model_api, scorer, source,
                                                        time.time() - started, stopped_by, scores)
                    if failure is not None and not isinstance(stopped_by, OutputWriteError):
                        stopped_by = OutputWriteError.after(failure, out, checkpoint.saved_iteration)
                    elif unwritten:
                        stopped_by = OutputWriteError(f"{stopped_by} ({', '.join(unwritten)} could not be written either)")
        finally:
            if owns_the_folder:
                discard_unstarted_run(files)
    if stopped_by is not None:
        raise stopped_by
    return out


def crash_before_rename(path: Path) -> None:
    """ICM_CRASH_AT=checkpoint-write:N (core/crash_points.py), injected into the run's RunDirectory: the resume
    tests' kill (or write failure) at the Nth write of the run's state (run.json, checkpoint.json), its new
    content written but not yet renamed into place."""
    if path.name in (RUN_FILE, CHECKPOINT_FILE):
        maybe_crash("checkpoint-write")


class Checkpointer:
    """Saves the search after each iteration, and remembers which iteration the file on disk holds."""

    def __init__(self, files: RunDirectory, run_record: dict, search: ICMSearch, rng: random.Random) -> None:
        self.files, self.run_record, self.search, self.rng = files, run_record, search, rng
        self.saved_iteration: Optional[int] = search.state.iteration if files.checkpoint_file.exists() else None

    def __call__(self) -> None:
        save_checkpoint(self.files, self.run_record, self.search.state, self.rng)
        self.saved_iteration = self.search.state.iteration


def _final_scores(scorer, state: SearchState, stopped_by: Optional[BaseException],
                  stop: GracefulStop) -> tuple[dict[int, float], Optional[BaseException]]:
    """Every claim's score for labels.jsonl, by uid, and what stopped the run, if anything. A labelled claim's is
    its leave-one-out score under the final labels; a claim the search never labelled is predicted from all
    labelled ones, the lot in one batched call. A stopped run asks for no new prediction, and after a model
    failure nothing at all: what isn't known stays out (null)."""
    claims = state.claims
    if stopped_by is not None:
        # After a model failure or a second Ctrl-C, don't ask the model again; otherwise this is a memo or
        # response-cache hit.
        asks_nothing = (ScoringError, OutputWriteError, KeyboardInterrupt)
        pool = scorer.known_pool_scores if isinstance(stopped_by, asks_nothing) else scorer.pool_scores
        return {**pool(claims), **scorer.known_predictions(claims)}, stopped_by
    try:
        return {**scorer.pool_scores(claims), **scorer.predict_unlabeled(claims)}, None
    except WaitInterrupted:
        stopped_by = stop.stopped()
    except KeyboardInterrupt as exc:
        stopped_by = exc
    except ScoringError as exc:
        # The search is complete and only these scores are missing; a resume of the finished run retries them.
        print(f"note: the claims the search never labelled could not be scored ({exc}); their score is null. "
              "Resume the run to try again", file=sys.stderr)
    return {**scorer.known_pool_scores(claims), **scorer.known_predictions(claims)}, stopped_by


def _write_results(files: RunDirectory, args, state, search, model_api, scorer, source, wall_seconds,
                   stopped_by, scores: dict[int, float]) -> tuple[list[str], Optional[OSError]]:
    """labels.jsonl and summary.json, each written if it can be. Returns the names of those that could not be,
    and the first error."""
    masses = {**scorer.known_label_masses(state.claims), **scorer.known_prediction_masses(state.claims)}
    results = {
        files.labels_file: lambda: jsonl(label_rows(state.claims, scores, masses)),
        files.summary_file: lambda: json.dumps(_summary(args, state, search, model_api, scorer, source, wall_seconds, stopped_by),
                                               indent=2, allow_nan=False) + "\n",
    }
    unwritten: list[str] = []
    failure: Optional[OSError] = None
    for path, text in results.items():
        try:
            files.write(path, text())
        except OSError as exc:
            unwritten.append(path.name)
            failure = failure or exc
    if not unwritten:
        print(f"wrote {files.path}/{LABELS_FILE}, {LOG_FILE}, {SUMMARY_FILE}", file=sys.stderr)
    return unwritten, failure


def _search_with_log(search: ICMSearch, files: RunDirectory, args: argparse.Namespace, stop: GracefulStop,
                     checkpoint: Checkpointer) -> Optional[BaseException]:
    """Run the search, logging and checkpointing each iteration; return what stopped it early, if anything."""
    out = files.path
    bar = tqdm(total=args.K, initial=search.state.iteration, desc="ICM search", unit="iter",
               disable=not show_progress_bars(args.no_progress))
    log: Optional[IterationLog] = None

    def on_step(record: dict) -> None:
        log(record)
        maybe_crash("after-log")
        checkpoint()
        bar.update(1)
        bar.set_postfix(energy=f"{record['energy']:.2f}", labelled=record["labelled"], acc=record["train_accuracy"])
        stop.check()

    try:
        log = IterationLog(files.log_file)
        stop.check()
        if search.state.metric is None:
            search.initialise()
            checkpoint()
            warning = low_mass_warning(list(search.scorer.known_label_masses(search.state.claims).values()), args.label_style)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
        stop.check()
        search.run(on_step)
        return None
    except WaitInterrupted:
        stopped: BaseException = stop.stopped()
    except (SearchStopped, KeyboardInterrupt, ScoringError) as exc:
        stopped = exc
    except OSError as exc:
        stopped = OutputWriteError.after(exc, out, checkpoint.saved_iteration)
    finally:
        bar.close()
        if log is not None:
            log.close()
    if search.state.metric is None or isinstance(stopped, OutputWriteError):
        print(f"stopped at iteration {search.state.iteration}", file=sys.stderr)
    else:
        print(f"stopped at iteration {search.state.iteration}: keeping the labels found so far; "
              f"resume with --resume {out}", file=sys.stderr)
    return stopped


def _settings(args: argparse.Namespace):
    if args.secrets is not None and not args.secrets.is_file():
        raise SettingsError(f"--secrets {args.secrets}: no such file (copy SECRETS.example)")
    return load_settings(args.secrets)


def _summary(args, state, search, model_api, scorer, source, wall_seconds, stopped_by) -> dict:
    metric = state.metric or {}
    stats = model_api.refresh_stats()
    cache = model_api.cache
    return {
        "testbed": args.testbed,
        "data_source": source,
        "settings": run_settings(args),
        **model_api.describe(),
        "stopped_early": None if stopped_by is None else scrub_credentials(str(stopped_by) or type(stopped_by).__name__),
        "iterations": state.iteration,
        "flip_cnt": state.flip_cnt,
        "final": {
            "energy": search.energy(metric) if metric else None,
            "train_prob": metric.get("train_prob"),
            "inconsistent_num": metric.get("inconsistent_num"),
            "train_accuracy": metric.get("train_accuracy"),
            "labeled": metric.get("train_size"),
            "pool_size": len(state.claims),
        },
        "wall_seconds": round(wall_seconds, 2),
        "requests": stats.requests,
        "prompts_scored": stats.prompts,
        "prompt_tokens": stats.prompt_tokens,
        "computed_prompt_tokens": stats.computed_tokens,
        "pool_scores_computed": scorer.pool_scores_computed,
        "pool_scores_reused": scorer.pool_scores_reused,
        "single_predictions_computed": scorer.single_predictions_computed,
        "batch_predictions_computed": scorer.batch_predictions_computed,
        "response_cache": None if cache is None else {"path": str(cache.path), "hits": cache.hits, "misses": cache.misses},
        "label_mass": label_mass_summary(list(scorer.known_label_masses(state.claims).values()), args.label_style),
    }


def label_mass_summary(masses: list[float], label_style: str) -> Optional[dict]:
    """The label mass of the final labelling's leave-one-out answers: median, least, and how many fall below
    LOW_LABEL_MASS, with the warning (also printed) when the median does."""
    if not masses:
        return None
    warning = low_mass_warning(masses, label_style)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return {"median": median(masses), "min": min(masses), "below_threshold": sum(m < LOW_LABEL_MASS for m in masses),
            "threshold": LOW_LABEL_MASS, "claims": len(masses), "warning": warning}


def output_dir(args: argparse.Namespace) -> Path:
    """The directory this invocation works in (and locks)."""
    if args.resume is None:
        return args.output_dir or default_output_dir(args)
    if args.output_dir is not None and args.output_dir.resolve() != args.resume.resolve():
        raise UsageError(f"--resume {args.resume} continues the run in {args.resume}; --output-dir {args.output_dir} "
                         "would be ignored: drop --output-dir")
    if args.overwrite:
        raise UsageError(f"--resume {args.resume} continues the run, and --overwrite would replace it: drop one of them "
                         f"(to start again in that folder: the run's flags with --output-dir {args.resume} --overwrite)")
    return args.resume


# Errors that are the user's to fix: one line, exit code 2.
USER_ERRORS = (UsageError, UserError, DataError, OutputDirInUse, OutputDirLocked, OutputDirUnusable, OutputWriteError, ModelFileMissing,
               RouteUnavailable, ScoringError, SettingsError, CheckpointError, CacheUnusable)


def context_advice(args: argparse.Namespace) -> str:
    """What to change on our side when a prompt doesn't fit the model's context: the pool's size decides a
    prompt's length (every other claim is a demonstration)."""
    if args.num_batches is not None:
        return (f"Each shard's pool must fit in the context: split the data into more shards (--num-batches, now "
                f"{args.num_batches})")
    return f"Lower --batch_size (now {args.batch_size}) so that the pool's claims fit in one prompt"


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        passed = passed_flags(argv if argv is not None else sys.argv[1:])
        if args.resume is None:
            validate(args)  # before the lock, so a mistyped flag leaves no folder behind
        out = output_dir(args)
        refuse_writing_over_data(args, out)
        with RunDirectory(out).lock():
            if args.resume is not None:
                args = resumed_args(args, passed)
            run(apply_paper_mode(args, passed), out)
    except PromptTooLong as exc:
        print(f"error: {scrub_credentials(str(exc))}. {context_advice(args)}, {exc.server_fix}", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        print(f"error: {scrub_credentials(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the run reads or writes that the system refuses (permissions, a full disk)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}: check that the path exists, and that this user may read and "
              "write it", file=sys.stderr)
        return 2
    except SearchStopped as stopped:
        return stopped.exit_code
    except Exception as exc:  # a network error a model route let through
        if network_error_line(exc) is None:
            raise
        print(f"error: {scrub_credentials(network_error_line(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    exit_process(main())
