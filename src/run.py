"""One ICM run, from its configuration to labels.jsonl: ``run(config)``.

    from src.config.run_config import RunConfig, DataConfig, SearchConfig
    from src.run import run
    run(RunConfig(data=DataConfig(testbed="demo", batch_size=8, num_seed=4), search=SearchConfig(K=20)))

``run`` picks the output directory, holds its lock, applies resume (the settings the run was started with) and
paper mode to the config, draws the pool, and runs the search with a log line and a checkpoint per iteration.
src/experiments/ICM.py is its command line. Errors the user can fix are a ``UserError``; a run stopped by
Ctrl-C/SIGTERM raises SearchStopped (its exit code).
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from core.crash_points import armed as crash_points_armed, maybe_crash
from core.errors import UserError
from core.interrupts import WaitInterrupted
from core.llm_api.base_llm import ScoringError
from core.llm_api.faults import PromptTooLong
from core.llm_api.redaction import scrub_credentials
from core.llm_api.settings import Settings, SettingsError, load_settings
from src.cli.cli_errors import UsageError
from src.cli.stop_signals import GracefulStop, SearchStopped
from src.config.run_config import PAPER_MODE_TOP_K, DataConfig, InvocationConfig, RunConfig, flag
from src.config.run_flags import recorded_setting_problem, validate
from src.data.data_provenance import data_record
from src.data.record_files import parse_columns
from src.data.testbeds import TESTBED_SPECS, load_testbed_claims, sample_pool, shard_pool
from src.data.true_share_pool import sample_pool_with_true_share, unlabelled_count
from src.pipeline.label_scores import LOW_LABEL_MASS, low_mass_warning, median
from src.pipeline.scoring_cost import SCORER_COUNTS, Prices
from src.pipeline.pipeline import (
    ScoringOptions,
    ScoringPipeline,
    refuse_claims_longer_than_the_context,
    show_progress_bars,
)
from src.run_directory.checkpoint import (
    check_resumed_pool,
    damaged,
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
from src.run_directory.output_paths import data_files, refuse_writing_over
from src.run_directory.cost_ledger import CostLedger
from src.run_directory.run_directory import CHECKPOINT_FILE, LABELS_FILE, LOG_FILE, RUN_FILE, SUMMARY_FILE, RunDirectory
from src.run_directory.run_outputs import (
    IterationLog,
    OutputWriteError,
    discard_unstarted_run,
    jsonl,
    label_rows,
    prepare_output_dir,
)
from src.search.annealing import SearchState
from src.search.baselines import (
    LENGTH_SETTING,
    UNUSED_SETTINGS,
    BaselineLabeller,
    Labeller,
    initial_claims,
    make_labeller,
    planned_iterations,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


class PoolTooLong(UserError):
    """A prompt of the pool does not fit the model's context: the server's words, and what to change on each side."""


def run(config: RunConfig, passed: frozenset[str] = frozenset()) -> Path:
    """Label the pool ``config`` describes; return the run's directory.

    ``passed`` names the settings the caller gave explicitly (ICM.py: the flags on its command line). On a resume
    (config.invocation.resume) only those of them that may change (K, the data's paths, the cache) replace the
    recorded ones, and one that may not change must match the record; under paper mode one of them that
    contradicts it is refused. Raises UserError (one line for the user), SearchStopped (Ctrl-C, SIGTERM) or
    KeyboardInterrupt (a second Ctrl-C)."""
    if config.invocation.resume is None:
        validate(config)  # before the lock, so a mistyped flag leaves no folder behind
    out = output_dir(config)
    refuse_writing_over_data(config, out)
    files = RunDirectory(out)
    with files.lock():
        if config.invocation.resume is not None:
            record = load_run(files)
            problem = recorded_setting_problem(record["settings"])
            if problem is not None:
                raise damaged(files.run_file, f"its setting {problem}")
            config = RunConfig.resumed(record, config, set(passed))
        config = config.with_paper_mode(set(passed))  # refuses what contradicts paper mode, before any note
        note_unused_flags(config, passed)
        try:
            return run_in(config, out)
        except PromptTooLong as exc:
            raise PoolTooLong(f"{scrub_credentials(str(exc))}. {context_advice(config.data)}, {exc.server_fix}") from exc


def note_unused_flags(config: RunConfig, passed: frozenset[str]) -> None:
    """Say which of the flags given mean nothing to this run's labeller (--K to a baseline, --bootstrap-rounds to
    ICM). They are not refused: a grid of runs passes the same flags to every labeller, and none of these changes
    what the labeller computes."""
    unused = sorted(passed & UNUSED_SETTINGS[config.search.labeller])
    if unused:
        print(f"note: --labeller {config.search.labeller} ignores {', '.join(flag(name) for name in unused)}",
              file=sys.stderr)


def context_advice(data: DataConfig) -> str:
    """What to change on our side when a prompt doesn't fit the model's context: the pool's size decides a
    prompt's length (every other claim is a demonstration)."""
    if data.num_batches is not None:
        return (f"Each shard's pool must fit in the context: split the data into more shards (--num-batches, now "
                f"{data.num_batches})")
    return f"Lower --batch_size (now {data.batch_size}) so that the pool's claims fit in one prompt"


def default_output_dir(config: RunConfig) -> Path:
    """results/<testbed>-K<K>-bs<batch>-seed<seed> for ICM; a baseline's name stands for K<K>, so ICM and the
    baselines of one pool land side by side."""
    data, labeller = config.data, config.search.labeller
    length = f"K{config.search.K}" if labeller == "icm" else labeller
    if data.num_batches is not None:
        return REPO_ROOT / "results" / f"{data.testbed}-{length}-seed{data.seed}-shard{data.batch_index}of{data.num_batches}"
    return REPO_ROOT / "results" / f"{data.testbed}-{length}-bs{data.batch_size}-seed{data.seed}"


def draw_pool(data: DataConfig, checks_num_seed: bool = True) -> tuple[list[dict], random.Random, str]:
    """The pool this run labels, the RNG the search goes on with, and where the claims came from.
    ``checks_num_seed``: refuse a --num_seed larger than the pool (ICM's; a baseline labels the whole pool)."""
    columns = parse_columns(data.columns) if data.columns else None
    claims, source, from_test = load_testbed_claims(data.testbed, data.data_dir, data.data, not data.no_gold_consistency,
                                                    columns)
    if from_test:
        print(f"note: no train split for {data.testbed}; the pool is drawn from {source}. "
              f"Exclude {LABELS_FILE}'s consistency_ids when you evaluate on that file.", file=sys.stderr)
    if data.true_share is not None and unlabelled_count(claims):
        print(f"note: {unlabelled_count(claims)} claims of {source} have no gold label; --true-share never draws them",
              file=sys.stderr)
    if data.num_batches is None:
        rng = random.Random(data.seed)
        pool = _sample(data, claims, rng, source)
        if data.pool_seed is not None:
            # The pool comes from --pool-seed; the search's RNG goes on from where --seed's own draw of the pool left
            # it, so the seed labels and the search take the random numbers they would take without --pool-seed.
            pool = _sample(data, claims, random.Random(data.pool_seed), source)
        if checks_num_seed and data.num_seed > len(pool):
            raise UsageError(f"--num_seed {data.num_seed} is larger than the pool: whole consistency groups of {source} "
                             f"fill only {len(pool)} of --batch_size {data.batch_size}; lower --num_seed or raise --batch_size")
    else:
        pool = shard_pool(claims, TESTBED_SPECS[data.testbed], data.num_batches, data.batch_index, data.seed, source)
        rng = random.Random(f"{data.seed}:{data.batch_index}")  # each shard's own seed labels and search
        if checks_num_seed and data.num_seed > len(pool):
            raise UsageError(f"--num_seed {data.num_seed} is larger than this shard's {len(pool)} claims: use fewer --num-batches")
    return pool, rng, source


def _sample(data: DataConfig, claims: list[dict], rng: random.Random, source: str) -> list[dict]:
    """One pool of --batch_size drawn with ``rng``: whole groups at random, or with --true-share's share of gold-True."""
    testbed = TESTBED_SPECS[data.testbed]
    if data.true_share is None:
        return sample_pool(claims, testbed, data.batch_size, rng, source)
    return sample_pool_with_true_share(claims, testbed, data.batch_size, data.true_share, rng, source)


def start_or_resume(config: RunConfig, files: RunDirectory, state: SearchState, rng: random.Random,
                    source: str) -> tuple[SearchState, random.Random, dict]:
    """A new run's record (run.json), or a resumed run's state, RNG and trimmed log; and the run's record."""
    out = files.path
    files.remove_leftover_temporaries()
    data = data_record(config.data.data_dir, config.data.data, source)
    if not config.invocation.resume:
        prepare_output_dir(files, config.invocation.overwrite)
        return state, rng, save_run(files, config.to_json(), pool_fingerprint(state.claims), new_run_id(), data)
    run = load_run(files)
    check_resumed_pool(run, state.claims, out, source)
    saved = load_checkpoint(files, run)
    if saved is not None:
        # ICM flips one label per iteration; a baseline's round may change every label.
        per_iteration = 1 if config.search.labeller == "icm" else len(state.claims)
        state, rng = restore_state(saved, state.claims, files.checkpoint_file, per_iteration)
        if config.prompts.prompt_layout == "tree-volatility" and state.iteration:
            # The layout's history of label changes lives in the scorer's memory, not in the checkpoint.
            print("note: --prompt-layout tree-volatility starts its count of label changes again on a resume, so the "
                  "prompts from here on may differ from an uninterrupted run's", file=sys.stderr)
    planned, length = planned_iterations(config.search), LENGTH_SETTING[config.search.labeller]
    unit = "iterations" if config.search.labeller == "icm" else "rounds"
    if planned < state.iteration:
        raise UsageError(f"{flag(length)} {planned} is below the {state.iteration} {unit} this run has done: "
                         f"pass {flag(length)} {state.iteration} or more, or leave {flag(length)} out")
    trim_log(files, state.iteration)
    length_changed = length is not None and run["settings"].get(length) != planned
    if length_changed or run.get("data") != data:
        if length is not None:
            run["settings"][length] = planned  # the run's record says how long the run is meant to be
        run["data"] = data  # and where its data is now (the pool fingerprint has checked it is the same pool)
        rewrite_run(files, run)
    print(f"resuming {out} at {unit[:-1]} {state.iteration} of {planned}", file=sys.stderr)
    return state, rng, run


def scoring_options(config: RunConfig, out: Path) -> ScoringOptions:
    route = config.route
    return ScoringOptions(
        route, config.prompts, show_progress=show_progress_bars(config.invocation.no_progress),
        cache_dir=None if route.no_cache else (route.cache_dir or out),
        external_top_k=PAPER_MODE_TOP_K if config.paper_mode else None,
    )


def refuse_writing_over_data(config: RunConfig, out: Path) -> None:
    """The run's folder must not hold its data (--overwrite would replace a data file named like a run file), and
    the response cache must land neither on the data nor on one of the run's own files."""
    reads = data_files(config.data.data_dir, config.data.data)
    refuse_writing_over(out, "--resume" if config.invocation.resume else "--output-dir", reads, folder=True)
    route = config.route
    if not route.no_cache and route.cache_dir is not None:
        files = RunDirectory(out)
        own = [(f"the run's {path.name}", path) for path in files.own_files() if path != files.cache_file]
        refuse_writing_over(route.cache_dir, "--cache-dir", reads + own, folder=False)


def run_in(config: RunConfig, out: Path) -> Path:
    """The search of ``config`` (paper mode and resume already applied) in ``out``, whose RunLock the caller holds."""
    validate(config)
    refuse_writing_over_data(config, out)  # again with a resumed run's own data
    pool, rng, source = draw_pool(config.data, checks_num_seed=config.search.labeller == "icm")
    route_settings = _settings(config.invocation)
    started = time.time()
    files = RunDirectory(out, before_rename=crash_before_rename if crash_points_armed() else None)
    owns_the_folder = False  # a refused start or resume leaves the folder as it found it
    with GracefulStop() as stop:
        try:
            start = SearchState(claims=initial_claims(pool, config.search, config.data.num_seed, rng))
            state, rng, run_record = start_or_resume(config, files, start, rng, source)
            owns_the_folder = True
            ledger = CostLedger.for_run(files, config.invocation.resume is not None, started,
                                        Prices.from_settings(route_settings))
            try:
                pipeline = ScoringPipeline(scoring_options(config, out), route_settings)
            except WaitInterrupted:
                print("stopped while waiting for the server, before any scoring: run the same command again", file=sys.stderr)
                raise stop.stopped() from None
            with pipeline:
                model_api, scorer = pipeline.model_api, pipeline.scorer
                refuse_claims_longer_than_the_context(pool, model_api, config.prompts.label_style, source)
                where = model_api.describe().get("endpoint")
                print(f"route: {model_api.route_name}{f' at {where}' if where else ''}  model: {model_api.model}  "
                      f"pool: {len(pool)} claims from {source}", file=sys.stderr)
                if config.consistency_key_from_gold:
                    print(f"note: --testbed {config.data.testbed} derives its consistency key from the gold labels (as the "
                          "reference does), so these labels are not unsupervised: don't report them as such. "
                          "--no-gold-consistency keeps gold out of the search", file=sys.stderr)
                if config.data.true_share is not None:
                    print(f"note: --true-share {config.data.true_share} drew the pool by its gold labels, so these labels "
                          "are not unsupervised: report them as a stress test of an imbalanced pool, not as labels "
                          "found without gold", file=sys.stderr)
                search = make_labeller(scorer, config.search, rng, state, check_stop=stop.check)
                checkpoint = Checkpointer(files, run_record, search, rng,
                                          cost=lambda: ledger.for_checkpoint(model_api, scorer))
                stopped_by = _search_with_log(search, files, config, stop, checkpoint)
                if state.metric is not None:
                    scores, stopped_by = _final_scores(scorer, state, stopped_by, stop)
                    unwritten, failure = _write_results(files, config, state, search, model_api, scorer, source,
                                                        time.time() - started, stopped_by, scores, ledger)
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

    def __init__(self, files: RunDirectory, run_record: dict, search: Labeller, rng: random.Random,
                 cost: Optional[Callable[[], dict]] = None) -> None:
        """``cost`` gives the run's scoring totals so far (CostLedger.for_checkpoint), saved with the state."""
        self.files, self.run_record, self.search, self.rng, self.cost = files, run_record, search, rng, cost
        self.saved_iteration: Optional[int] = search.state.iteration if files.checkpoint_file.exists() else None

    def __call__(self) -> None:
        save_checkpoint(self.files, self.run_record, self.search.state, self.rng,
                        cost=None if self.cost is None else self.cost())
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


def _write_results(files: RunDirectory, config: RunConfig, state, search, model_api, scorer, source, wall_seconds,
                   stopped_by, scores: dict[int, float], ledger: CostLedger) -> tuple[list[str], Optional[OSError]]:
    """labels.jsonl and summary.json, each written if it can be. Returns the names of those that could not be,
    and the first error."""
    masses = {**scorer.known_label_masses(state.claims), **scorer.known_prediction_masses(state.claims)}
    results = {
        files.labels_file: lambda: jsonl(label_rows(state.claims, scores, masses)),
        files.summary_file: lambda: json.dumps(_summary(config, state, search, model_api, scorer, source, wall_seconds,
                                                        stopped_by, ledger), indent=2, allow_nan=False) + "\n",
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


def _search_with_log(search: Labeller, files: RunDirectory, config: RunConfig, stop: GracefulStop,
                     checkpoint: Checkpointer) -> Optional[BaseException]:
    """Run the search, logging and checkpointing each iteration; return what stopped it early, if anything."""
    out = files.path
    labeller = config.search.labeller
    bar = tqdm(total=planned_iterations(config.search), initial=search.state.iteration,
               desc="ICM search" if labeller == "icm" else labeller, unit="iter" if labeller == "icm" else "round",
               disable=not show_progress_bars(config.invocation.no_progress))
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
            warning = low_mass_warning(list(search.scorer.known_label_masses(search.state.claims).values()),
                                       config.prompts.label_style)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
        stop.check()
        search.run(on_step)
        note = search.outcome_note() if isinstance(search, BaselineLabeller) else None
        if note:
            print(note, file=sys.stderr)
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


def _settings(invocation: InvocationConfig) -> Settings:
    if invocation.secrets is not None and not invocation.secrets.is_file():
        raise SettingsError(f"--secrets {invocation.secrets}: no such file (copy SECRETS.example)")
    return load_settings(invocation.secrets)


def _summary(config: RunConfig, state, search, model_api, scorer, source, wall_seconds, stopped_by,
             ledger: CostLedger) -> dict:
    metric = state.metric or {}
    stats = model_api.refresh_stats()
    cache = model_api.cache
    cost = ledger.report(stats, model_api.route_name, wall_seconds, metric.get("train_size"), scorer)
    run_total = cost["run"]  # the top-level counts are the whole run's, over every invocation (cost_ledger.py)
    return {
        "testbed": config.data.testbed,
        "data_source": source,
        "settings": config.to_json(),
        "labeller": config.search.labeller,
        **(search.summary_fields() if isinstance(search, BaselineLabeller) else {}),
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
        **{name: run_total[name] for name in TOP_LEVEL_COUNTS},
        "response_cache": None if cache is None else {"path": str(cache.path), "hits": cache.hits, "misses": cache.misses},
        "label_mass": label_mass_summary(list(scorer.known_label_masses(state.claims).values()), config.prompts.label_style),
        "cost": cost,
    }


# summary.json's top-level counts: the run's totals over every invocation, as its cost block's "run" holds them
# (that block's "this_invocation" holds the last invocation's own).
TOP_LEVEL_COUNTS = ("wall_seconds", "requests", "prompts_scored", "prompt_tokens", "computed_prompt_tokens",
                    *SCORER_COUNTS)


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


def output_dir(config: RunConfig) -> Path:
    """The directory this invocation works in (and locks)."""
    invocation = config.invocation
    if invocation.resume is None:
        return invocation.output_dir or default_output_dir(config)
    if invocation.output_dir is not None and invocation.output_dir.resolve() != invocation.resume.resolve():
        raise UsageError(f"--resume {invocation.resume} continues the run in {invocation.resume}; --output-dir {invocation.output_dir} "
                         "would be ignored: drop --output-dir")
    if invocation.overwrite:
        raise UsageError(f"--resume {invocation.resume} continues the run, and --overwrite would replace it: drop one of them "
                         f"(to start again in that folder: the run's flags with --output-dir {invocation.resume} --overwrite)")
    return invocation.resume
