"""Evaluate runs' labels on the held-out test split against the paper's baselines, and compare labellers.

    python src/experiments/evaluate.py --run-dir OUT [--testbed truthfulQA --data-dir DIR] [--limit 200]
    python src/experiments/evaluate.py --run-dir A B C --compare-out DIR [--limit 200]
    python src/experiments/evaluate.py --sweep SWEEP [--compare-out DIR] [--limit 200]

Writes OUT/eval.json per run (accuracy, 95% bootstrap interval, n and the 1/0 correctness per test item for
each condition, and what was evaluated: the test items, the test data and its hash, the model, the labels'
iteration and hash, and what the scoring cost: requests, tokens, wall time, dollars on the hosted API) and
OUT/eval.png. Scores with the run's own route and model, and holds the run's lock
meanwhile, so a run can't change its labels under it. A run whose eval.json was made from the same labels,
test items (data, --limit, --seed), --max-demos and model is not scored again (--rescore scores it anyway).

With several runs (--run-dir A B C, or --sweep: every folder under SWEEP holding labels.jsonl), writes
comparison.json and comparison.png to --compare-out (required for several --run-dir; for --sweep, SWEEP by
default; never a run directory): per run its test accuracy, performance gap recovered and pool-label accuracy
with 95% intervals, and per labeller and setting (runs alike in every recorded setting that changes results) the
mean and 95% t-interval across seeds (none where a seed repeats), and beside them each run's labelling cost per
labelled claim (from its summary.json).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator, Optional, Sequence

from core.llm_api.settings import load_settings
from core.process_exit import exit_process
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.cli.cli_numbers import Bounded
from src.config.run_config import RouteConfig, RunConfig
from src.evaluation.eval_model import (
    ALLOW_OTHER_MODEL,
    ModelIdentity,
    check_model,
    choose_evaluation_route,
    model_to_request,
    recorded_model,
)
from src.evaluation.comparison import comparison_report, comparison_table, pool_label_accuracy
from src.evaluation.evaluation import CHANCE, evaluate_conditions, run_condition_name
from src.evaluation.figures import accuracy_chart, comparison_chart
from src.pipeline.scoring_cost import CostCounts, Prices, cost_report
from src.data.held_out import POOL_SOURCE_FLAG, pool_source, test_data_dir, test_split
from src.run_directory.output_paths import data_files, real, recorded_data_files, refuse_writing_over, run_files
from src.data.record_files import parse_columns
from src.run_directory.run_directory import (
    EVAL_FILE,
    EVAL_FIGURE,
    LABELS_FILE,
    MERGE_FILES,
    RUN_FILE,
    RUN_MARKERS,
    RunDirectory,
    atomic_path,
    write_atomically,
)
from src.run_directory.run_lock import OutputDirLocked, OutputDirUnusable
from src.run_directory.run_reading import (
    RUN_FILE_ADVICE,
    label_row_problem,
    read_json_lines,
    read_json_object,
    rewrite_advice,
    run_settings,
    run_summary,
)
from src.run_directory.run_status import warn_if_partial
from src.data.testbeds import TESTBED_SPECS
from src.pipeline.pipeline import ScoringOptions, ScoringPipeline, show_progress_bars


COMPARISON_FILE = "comparison.json"
COMPARISON_FIGURE = "comparison.png"


class EvaluationError(UserError):
    pass


@dataclass(frozen=True)
class EvaluationOptions:
    """How to evaluate each run: evaluate.py's flags other than which runs and where a comparison goes."""
    testbed: Optional[str] = None  # None: the run's
    data_dir: Optional[Path] = None  # None: the run's
    test_data: Optional[Path] = None
    pool_source: Optional[Path] = None
    limit: Optional[int] = None  # test claims drawn at random with ``seed``; None: all
    max_demos: Optional[int] = None
    model: Optional[str] = None
    allow_other_model: bool = False
    seed: int = 0  # for --limit, the random labels and the bootstraps
    cache_dir: Optional[Path] = None  # None: the run directory
    no_cache: bool = False
    no_progress: bool = True
    rescore: bool = False  # score even when the run's eval.json could be reused

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EvaluationOptions":
        return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})


@dataclass(frozen=True)
class EvaluatedRun:
    run_dir: Path
    settings: dict  # the run's recorded settings
    report: dict  # its eval.json
    reused: bool  # eval.json was already there for these labels, test items and model
    summary: Optional[dict] = None  # the run's summary.json as read now (its labelling cost), None if it wrote none


@dataclass
class RunFiles:
    """What evaluate.py reads from a run directory."""
    settings: dict  # the run's settings as recorded (run.json, else summary.json)
    config: RunConfig  # the same, read as the run's configuration
    rows: list[dict]  # labels.jsonl
    labels_sha256: str  # of labels.jsonl's bytes, as read
    data: Optional[dict]  # run.json's "data" (absolute paths, the pool source's hash); None for older runs
    summary: Optional[dict]  # summary.json; None if the run wrote none


def _json_object(path: Path, advice: str) -> Optional[dict]:
    """A JSON object file, None if absent; UserError (naming the damage) if damaged."""
    return read_json_object(path, advice) if path.is_file() else None


def check_run_dir(run_dir: Path) -> None:
    """Raise EvaluationError unless ``run_dir`` is a folder holding labels.jsonl."""
    if not run_dir.is_dir():
        raise EvaluationError(f"--run-dir {run_dir}: no such folder; point it at an ICM.py --output-dir")
    if not RunDirectory(run_dir).labels_file.is_file():
        raise EvaluationError(f"--run-dir {run_dir}: no {LABELS_FILE} there; run ICM.py first (or point at its --output-dir)")


def sweep_runs(sweep: Path) -> list[Path]:
    """Every folder under ``sweep`` (at any depth, itself included) that holds labels.jsonl, sorted by path.
    Raises EvaluationError when there is none."""
    if not sweep.is_dir():
        raise EvaluationError(f"--sweep {sweep}: no such folder; point it at the folder a sweep writes its runs into")
    found = sorted({path.parent for path in sweep.rglob(LABELS_FILE) if path.is_file()})
    if not found:
        raise EvaluationError(f"--sweep {sweep}: no run directories under it (folders holding {LABELS_FILE}); run the "
                              "sweep's cells first, or point at the folder they write into")
    return found


def distinct_runs(run_dirs: Sequence[Path]) -> list[Path]:
    """``run_dirs`` checked (check_run_dir), each once (the same folder named twice would count its seed twice)."""
    seen: dict[Path, Path] = {}
    for run_dir in run_dirs:
        check_run_dir(Path(run_dir))
        seen.setdefault(real(Path(run_dir)), Path(run_dir))
    return list(seen.values())


def read_run(run_dir: Path) -> RunFiles:
    """The run's settings, labels and records. Raises UserError for a missing or damaged file."""
    files = RunDirectory(run_dir)
    labels_path = files.labels_file
    check_run_dir(run_dir)
    rewrite = rewrite_advice(run_dir)
    settings = run_settings(run_dir, required=True)
    if settings.get("testbed") not in TESTBED_SPECS:
        raise EvaluationError(f"{run_dir}: its recorded settings name no known testbed ({settings.get('testbed')!r}); "
                              f"restore {RUN_FILE} from a copy")
    run_record = _json_object(files.run_file, RUN_FILE_ADVICE)
    summary = run_summary(run_dir)
    rows = read_json_lines(labels_path, rewrite, check=label_row_problem)
    raw = labels_path.read_bytes()  # the run's lock is held: these are the bytes just parsed
    data = run_record.get("data") if run_record and isinstance(run_record.get("data"), dict) else None
    return RunFiles(settings, RunConfig.from_json(settings), rows, hashlib.sha256(raw).hexdigest(), data, summary)


@contextmanager
def run_lock_for_evaluation(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock while evaluating: a live run is refused at once, and no resume starts meanwhile."""
    if not run_dir.is_dir():
        raise EvaluationError(f"--run-dir {run_dir}: no such folder; point it at an ICM.py --output-dir")
    try:
        with RunDirectory(run_dir).lock():
            yield
    except OutputDirLocked as exc:
        raise EvaluationError(f"--run-dir {run_dir} is in use by process {exc.holder} (an ICM run, or another evaluation): "
                              "its labels may still change. Evaluate once it has finished, or stop it (Ctrl-C keeps "
                              "its labels so far)") from None
    except OutputDirUnusable as exc:
        cause = getattr(exc.__context__, "strerror", None) or "not writable"
        raise EvaluationError(f"--run-dir {run_dir} can't be written ({cause}), and the run's lock and {EVAL_FILE} go there: "
                              "make it writable, or evaluate a copy of the run") from None


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs = parser.add_mutually_exclusive_group(required=True)
    runs.add_argument("--run-dir", type=Path, nargs="+", metavar="DIR",
                      help="one or more ICM.py --output-dir (of any --labeller); several need --compare-out")
    runs.add_argument("--sweep", type=Path, default=None, metavar="DIR",
                      help=f"evaluate and compare every run directory under DIR (every folder holding {LABELS_FILE})")
    parser.add_argument("--compare-out", type=Path, default=None, metavar="DIR",
                        help=f"where {COMPARISON_FILE} and {COMPARISON_FIGURE} go (made if missing). Required with several "
                             "--run-dir; with --sweep, default: the sweep's folder; with one --run-dir, none unless given")
    parser.add_argument("--testbed", default=None, help="default: the run's")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: the run's")
    parser.add_argument("--test-data", type=Path, default=None, help="a test JSON file (default: test_<testbed>.json in --data-dir)")
    parser.add_argument(POOL_SOURCE_FLAG, dest="pool_source", type=Path, default=None, metavar="FILE",
                        help=f"the data file the run's pool was drawn from, for runs whose {RUN_FILE} predates its "
                             "content hash: its claims' groups are left out when it is the test data")
    parser.add_argument("--limit", type=int, default=None, action=Bounded, at_least=1,
                        help="evaluate on this many test claims, drawn at random (default: all)")
    parser.add_argument("--max-demos", type=int, default=None, action=Bounded, at_least=1,
                        help="at most this many demonstrations (default: all labelled)")
    parser.add_argument("--model", default=None, help="default: the run's")
    parser.add_argument(ALLOW_OTHER_MODEL, dest="allow_other_model", action="store_true",
                        help="score with the route and model this environment gives (and --model), even when they are "
                             f"not the run's; {EVAL_FILE} records both")
    parser.add_argument("--seed", type=int, default=0, action=Bounded, at_least=0,
                        help="for --limit, the random labels and the bootstrap (0 or more)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the response cache lives (default: the run directory, whose cache the run filled)")
    parser.add_argument("--no-cache", action="store_true", help="no response cache")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--rescore", action="store_true",
                        help=f"score every run again, even one whose {EVAL_FILE} matches its labels, test items and model")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        options = EvaluationOptions.from_args(args)
        run_dirs = distinct_runs(args.run_dir) if args.run_dir else sweep_runs(args.sweep)
        out = args.compare_out if args.compare_out is not None else args.sweep
        if out is not None:
            refuse_comparison_in_run_dir(out, "--compare-out" if args.compare_out is not None else "--sweep")
        if out is None and len(run_dirs) > 1:
            raise EvaluationError(f"{len(run_dirs)} runs given: pass --compare-out DIR, the folder for "
                                  f"{COMPARISON_FILE} and {COMPARISON_FIGURE}")
        if out is None:
            evaluate_run(run_dirs[0], options)
            return 0
        comparison = compare_runs(run_dirs, options, out=out)
        print(comparison_table(comparison))
        print(f"wrote {out / COMPARISON_FILE} and {COMPARISON_FIGURE}", file=sys.stderr)
        return 0

    return run_main(body)


def compare_runs(run_dirs: Sequence[Path], options: Optional[EvaluationOptions] = None, *,
                 out: Optional[Path] = None) -> dict:
    """Evaluate each run of ``run_dirs`` (evaluate_run: an eval.json that matches is reused, not scored again)
    and compare them: comparison.json's content (src/evaluation/comparison.py, plus the evaluation's settings
    under "evaluation"). With ``out``, also writes out/comparison.json and out/comparison.png (the folder is made
    if missing). Raises UserError (EvaluationError) for a missing run or labels.jsonl, before any scoring."""
    options = options or EvaluationOptions()
    run_dirs = distinct_runs(run_dirs)
    if out is not None:
        refuse_comparison_in_run_dir(out, "--compare-out")
        refuse_comparison_over_inputs(out, options, run_dirs)
    evaluated = [evaluate_run(run_dir, options) for run_dir in run_dirs]
    comparison = {
        "evaluation": {"limit": options.limit, "max_demos": options.max_demos, "seed": options.seed},
        **comparison_report([(str(e.run_dir), e.settings, e.report, e.reused) for e in evaluated],
                            summaries=[e.summary for e in evaluated]),
    }
    for line in comparison["labellers"]:
        if line["interval_note"]:
            setting = f" ({line['label']})" if line["label"] else ""
            print(f"warning: {line['labeller']}{setting} on {line['testbed']}: {line['interval_note']} "
                  f"({', '.join(line['run_dirs'])})", file=sys.stderr)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_atomically(out / COMPARISON_FILE, json.dumps(comparison, indent=2) + "\n")
        testbeds = sorted({e.report["testbed"] for e in evaluated})
        with atomic_path(out / COMPARISON_FIGURE) as temporary:
            comparison_chart(comparison["figure"], f"Test accuracy by labeller: {len(evaluated)} runs on "
                                                   f"{', '.join(testbeds)}", temporary)
    return comparison


def refuse_comparison_in_run_dir(out: Path, flag: str) -> None:
    """comparison.json and comparison.png describe several runs: they don't go among one run's own files, where
    they would pass for that run's and be taken for a sweep's run by --sweep. EvaluationError if ``out`` (given
    as ``flag``) is a run directory."""
    found = RunDirectory(out).existing((*RUN_MARKERS, *MERGE_FILES)) if Path(out).is_dir() else []
    if found:
        instead = real(Path(out)).parent / "comparison"
        what = "is" if flag == "--compare-out" else "is itself"
        raise EvaluationError(f"{flag} {out} {what} a run directory (it holds {', '.join(found)}), and {COMPARISON_FILE} "
                              f"and {COMPARISON_FIGURE} compare several runs: pass --compare-out DIR, a folder of its "
                              f"own (e.g. --compare-out {instead})")


def refuse_comparison_over_inputs(out: Path, options: EvaluationOptions, run_dirs: Sequence[Path]) -> None:
    """comparison.json and comparison.png must not land on the test data, a run's data or a run's own files."""
    reads = [("the --test-data file", options.test_data)] if options.test_data else []
    reads += [("the --pool-source file", options.pool_source)] if options.pool_source else []
    reads += data_files(options.data_dir)
    for run_dir in run_dirs:
        reads += recorded_data_files(run_settings(run_dir)) + run_files(run_dir)
    for name in (COMPARISON_FILE, COMPARISON_FIGURE):
        refuse_writing_over(out / name, "--compare-out", reads, folder=False)


def evaluate_run(run_dir: Path, options: Optional[EvaluationOptions] = None) -> EvaluatedRun:
    """Evaluate one run under its lock, writing run_dir/eval.json and eval.png, or reuse its eval.json when that
    was made from the same labels, test items, --max-demos and model (unless ``options.rescore``)."""
    options = options or EvaluationOptions()
    with run_lock_for_evaluation(run_dir):
        return _evaluate_held_run(Path(run_dir), options)


def _evaluate_held_run(run_dir: Path, args: EvaluationOptions) -> EvaluatedRun:
    run = read_run(run_dir)
    settings, config = run.settings, run.config
    progress = warn_if_partial(run_dir)
    testbed = args.testbed or settings.get("testbed")
    if testbed != settings.get("testbed"):
        raise EvaluationError(f"--testbed {testbed}: the run labelled {settings.get('testbed')}; evaluate it on that")
    refuse_writing_over_inputs(run_dir, args, settings)
    legacy_source = run.summary.get("data_source") if run.summary else None
    try:
        pool = pool_source(run.data, legacy_source if isinstance(legacy_source, str) else None, args.pool_source)
        needs_dir = args.test_data is None and testbed not in ("demo", "custom")
        data_dir = test_data_dir(args.data_dir, run.data, config.data.data_dir) if needs_dir else args.data_dir
        columns = parse_columns(config.data.columns) if config.data.columns else None  # the run's --columns
        held_out = test_split(testbed, args.test_data, data_dir, pool, run.rows, not config.data.no_gold_consistency, columns)
    except OSError as exc:
        raise EvaluationError(f"{exc.filename or 'the data'} can't be read ({exc.strerror}): check the path and its "
                              "permissions") from None
    claims = held_out.claims
    if held_out.matching_pool_text:
        print(f"warning: {held_out.matching_pool_text} test claims of {held_out.source.where} have the same text as "
              f"claims of the run's pool, though that is not the data the pool was drawn from", file=sys.stderr)
    if args.limit is not None:
        claims = random.Random(args.seed).sample(claims, min(args.limit, len(claims)))
    demos = [r for r in run.rows if r["label"] is not None][: args.max_demos]
    if not demos:
        raise EvaluationError(f"{run_dir}/{LABELS_FILE} has no labelled claims to use as demonstrations")

    files = RunDirectory(run_dir)
    own_condition = run_condition_name(settings.get("labeller"))
    run_model = recorded_model(run.summary)
    # What makes an eval.json this evaluation's: the same labels, test items, demonstrations and seed.
    identity = {"labels_sha256": run.labels_sha256, "test_sha256": held_out.source.sha256,
                "test_source": held_out.source.where, "limit": args.limit, "max_demos": args.max_demos,
                "seed": args.seed, "test_items": [c["record"] for c in claims], "run_condition": own_condition}
    previous = reusable_report(files, identity, run_model, args)
    if previous is not None:
        print(f"{run_dir}: reusing its {EVAL_FILE} (made from the same labels, test items and model; --rescore "
              "scores again)", file=sys.stderr)
        if not files.eval_figure.exists():
            draw_eval_figure(run_dir, config.data.seed, previous)
        print_conditions(run_dir, previous)
        return EvaluatedRun(run_dir, settings, previous, reused=True, summary=run.summary)

    route_settings = load_settings()
    use_vllm, route = choose_evaluation_route(run_model, route_settings, args.allow_other_model)
    # The run's prompts and --deterministic, with this evaluation's model, route and response cache.
    options = ScoringOptions(
        RouteConfig(model=model_to_request(run_model, route, args.model, config.route.model), use_vllm=use_vllm,
                    deterministic=config.route.deterministic),
        config.prompts, show_progress=show_progress_bars(args.no_progress),
        cache_dir=None if args.no_cache else (args.cache_dir or run_dir),
    )
    started = time.time()  # the evaluation's wall time: opening the model, and scoring every condition
    with ScoringPipeline(options, route_settings) as pipeline:
        api = pipeline.model_api
        used = ModelIdentity(api.route_name, api.model, api.describe().get("endpoint"))
        differs = check_model(run_model, used, args.allow_other_model)  # before any test prompt is scored
        print(f"route: {used.route}  model: {used.model}  test claims: {len(claims)} from {held_out.source.where}"
              f"  demonstrations: {len(demos)}", file=sys.stderr)
        results = evaluate_conditions(api, claims, demos, label_style=options.label_style,
                                      token_match=options.token_match, seed=args.seed, own_condition=own_condition)
        scoring = CostCounts.from_route(api.refresh_stats(), used.route, time.time() - started)
    gold_rate = sum(c["label"] for c in claims) / len(claims)
    report = {
        "testbed": testbed,
        "test_source": held_out.source.where, "test_sha256": held_out.source.sha256,
        "pool_source": held_out.pool.where, "pool_source_sha256": held_out.pool.sha256,
        "pool_is_test_data": held_out.source.same_data(held_out.pool),
        "excluded_pool_claims": held_out.excluded, "test_claims_matching_pool_text": held_out.matching_pool_text,
        "n_test": len(claims), "n_demos": len(demos),
        **used.as_dict(),
        "run_model": run_model.as_dict() if run_model else None, "differs_from_run": differs,
        "labels_used": {"sha256": run.labels_sha256, "iterations": progress.iterations, "K": progress.planned,
                        "finished": progress.finished, "stopped_early": progress.stopped_early},
        "seed": args.seed, "limit": args.limit, "max_demos": args.max_demos, "chance": CHANCE,
        "majority_class_rate": max(gold_rate, 1 - gold_rate),
        "labeller": settings.get("labeller") or "icm", "run_condition": own_condition,
        "pool_label_accuracy": pool_label_accuracy(run.rows),
        "test_items": identity["test_items"],  # each test claim's position in test_source, in scoring order
        "conditions": {name: result.as_dict() for name, result in results.items()},
        "cost": cost_report(scoring, total_key="evaluation", unit="test_claim", units=len(claims),
                            prices=Prices.from_settings(route_settings), route=used.route),
    }
    files.write(files.eval_file, json.dumps(report, indent=2) + "\n")
    draw_eval_figure(run_dir, config.data.seed, report)
    print_conditions(run_dir, report)
    print(f"wrote {run_dir}/{EVAL_FILE} and {EVAL_FIGURE}", file=sys.stderr)
    return EvaluatedRun(run_dir, settings, report, reused=False, summary=run.summary)


def draw_eval_figure(run_dir: Path, run_seed: Optional[int], report: dict) -> None:
    files = RunDirectory(run_dir)
    with atomic_path(files.eval_figure) as temporary:
        accuracy_chart(report["conditions"], eval_title(run_dir, run_seed, report), report["majority_class_rate"], temporary)


def print_conditions(run_dir: Path, report: dict) -> None:
    print(f"{run_dir}:")
    for name, result in report["conditions"].items():
        print(f"  {name:28s} {100 * result['accuracy']:5.1f}%  [{100 * result['ci_low']:.1f}, {100 * result['ci_high']:.1f}]  n={result['n']}")


def reusable_report(files: RunDirectory, identity: dict, run_model: Optional[ModelIdentity],
                    options: EvaluationOptions) -> Optional[dict]:
    """The run's eval.json if it was made with ``identity`` (labels' hash, test data, items, --limit,
    --max-demos, --seed, the run's condition) by the run's own route and model, and holds every condition's
    per-item correctness; else None (also for an eval.json that is unreadable: it is made again)."""
    if options.rescore or options.allow_other_model or run_model is None or not files.eval_file.is_file():
        return None
    try:
        report = json.loads(files.eval_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("conditions"), dict):
        return None
    recorded = {"labels_sha256": (report.get("labels_used") or {}).get("sha256"),
                **{key: report.get(key, "absent") for key in identity if key != "labels_sha256"}}
    if identity["test_sha256"] is not None:  # the same content wherever the file now is
        recorded["test_source"] = identity["test_source"]
    if recorded != identity:
        return None
    differs = report.get("differs_from_run") or {}
    same_model = (report.get("route"), report.get("model")) == (run_model.route, run_model.model) and \
        differs.get("route") is False and differs.get("model") is False
    if not same_model or options.model not in (None, run_model.model):
        return None
    n = len(identity["test_items"])
    if not all(isinstance(c, dict) and isinstance(c.get("correct"), list) and len(c["correct"]) == n
               for c in report["conditions"].values()):
        return None
    return report


def eval_title(run_dir: Path, run_seed: Optional[int], report: dict) -> str:
    """eval.png's title: the run (its directory and --seed), the testbed and model, and the counts."""
    seed = "" if run_seed is None else f" (--seed {run_seed})"
    return (f"{run_dir.resolve().name}{seed}: {report['testbed']} on {report['model']}\n"
            f"{report['n_demos']} demonstrations, {report['n_test']} test claims, 95% bootstrap CI")


def refuse_writing_over_inputs(run_dir: Path, args: EvaluationOptions, settings: dict) -> None:
    """eval.json, eval.png and the response cache must not land on the test data, the run's data or its files."""
    given = [("the --test-data file", args.test_data)] if args.test_data else []
    given += [("the --pool-source file", args.pool_source)] if args.pool_source else []
    reads = given + recorded_data_files(settings) + data_files(args.data_dir)
    files = RunDirectory(run_dir)
    for path in (files.eval_file, files.eval_figure):
        refuse_writing_over(path, "--run-dir", reads, folder=False)
    if not args.no_cache and args.cache_dir is not None:
        own = [(f"the run's {path.name}", path) for path in (*files.own_files(), files.eval_file, files.eval_figure)
               if path != files.cache_file]
        refuse_writing_over(args.cache_dir, "--cache-dir", reads + own, folder=False)


if __name__ == "__main__":
    exit_process(main())
