"""Evaluate a run's labels on the held-out test split against the paper's baselines.

    python src/experiments/evaluate.py --run-dir OUT [--testbed truthfulQA --data-dir DIR] [--limit 200]

Writes OUT/eval.json (accuracy, 95% bootstrap interval and n per condition, and what was evaluated: the test
data and its hash, the model, the labels' iteration and hash) and OUT/eval.png. Scores with the run's own
route and model, and holds the run's lock meanwhile, so a run can't change its labels under it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass
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
from src.evaluation.evaluation import CHANCE, evaluate_conditions
from src.evaluation.figures import accuracy_chart
from src.data.held_out import POOL_SOURCE_FLAG, pool_source, test_data_dir, test_split
from src.run_directory.output_paths import data_files, recorded_data_files, refuse_writing_over
from src.data.record_files import parse_columns
from src.run_directory.run_directory import EVAL_FILE, EVAL_FIGURE, LABELS_FILE, RUN_FILE, RunDirectory, atomic_path
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


class EvaluationError(UserError):
    pass


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


def read_run(run_dir: Path) -> RunFiles:
    """The run's settings, labels and records. Raises UserError for a missing or damaged file."""
    files = RunDirectory(run_dir)
    labels_path = files.labels_file
    if not labels_path.is_file():
        raise EvaluationError(f"--run-dir {run_dir}: no {LABELS_FILE} there; run ICM.py first (or point at its --output-dir)")
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
    parser.add_argument("--run-dir", type=Path, required=True, help="an ICM.py --output-dir")
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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> int:
        evaluate(build_parser().parse_args(argv))
        return 0

    return run_main(body)


def evaluate(args: argparse.Namespace) -> dict:
    with run_lock_for_evaluation(args.run_dir):
        return _evaluate_held_run(args)


def _evaluate_held_run(args: argparse.Namespace) -> dict:
    run = read_run(args.run_dir)
    settings, config = run.settings, run.config
    progress = warn_if_partial(args.run_dir)
    testbed = args.testbed or settings.get("testbed")
    if testbed != settings.get("testbed"):
        raise EvaluationError(f"--testbed {testbed}: the run labelled {settings.get('testbed')}; evaluate it on that")
    refuse_writing_over_inputs(args, settings)
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
        raise EvaluationError(f"{args.run_dir}/{LABELS_FILE} has no labelled claims to use as demonstrations")

    run_model = recorded_model(run.summary)
    route_settings = load_settings()
    use_vllm, route = choose_evaluation_route(run_model, route_settings, args.allow_other_model)
    # The run's prompts and --deterministic, with this evaluation's model, route and response cache.
    options = ScoringOptions(
        RouteConfig(model=model_to_request(run_model, route, args.model, config.route.model), use_vllm=use_vllm,
                    deterministic=config.route.deterministic),
        config.prompts, show_progress=show_progress_bars(args.no_progress),
        cache_dir=None if args.no_cache else (args.cache_dir or args.run_dir),
    )
    with ScoringPipeline(options, route_settings) as pipeline:
        api = pipeline.model_api
        used = ModelIdentity(api.route_name, api.model, api.describe().get("endpoint"))
        differs = check_model(run_model, used, args.allow_other_model)  # before any test prompt is scored
        print(f"route: {used.route}  model: {used.model}  test claims: {len(claims)} from {held_out.source.where}"
              f"  demonstrations: {len(demos)}", file=sys.stderr)
        results = evaluate_conditions(api, claims, demos, label_style=options.label_style,
                                      token_match=options.token_match, seed=args.seed)
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
        "seed": args.seed, "chance": CHANCE,
        "majority_class_rate": max(gold_rate, 1 - gold_rate),
        "conditions": {name: result.as_dict() for name, result in results.items()},
    }
    files = RunDirectory(args.run_dir)
    files.write(files.eval_file, json.dumps(report, indent=2) + "\n")
    with atomic_path(files.eval_figure) as temporary:
        accuracy_chart(report["conditions"], eval_title(args.run_dir, config.data.seed, report),
                       report["majority_class_rate"], temporary)
    for name, result in report["conditions"].items():
        print(f"  {name:14s} {100 * result['accuracy']:5.1f}%  [{100 * result['ci_low']:.1f}, {100 * result['ci_high']:.1f}]  n={result['n']}")
    print(f"wrote {args.run_dir}/{EVAL_FILE} and {EVAL_FIGURE}", file=sys.stderr)
    return report


def eval_title(run_dir: Path, run_seed: Optional[int], report: dict) -> str:
    """eval.png's title: the run (its directory and --seed), the testbed and model, and the counts."""
    seed = "" if run_seed is None else f" (--seed {run_seed})"
    return (f"{run_dir.resolve().name}{seed}: {report['testbed']} on {report['model']}\n"
            f"{report['n_demos']} demonstrations, {report['n_test']} test claims, 95% bootstrap CI")


def refuse_writing_over_inputs(args: argparse.Namespace, settings: dict) -> None:
    """eval.json, eval.png and the response cache must not land on the test data, the run's data or its files."""
    given = [("the --test-data file", args.test_data)] if args.test_data else []
    given += [("the --pool-source file", args.pool_source)] if args.pool_source else []
    reads = given + recorded_data_files(settings) + data_files(args.data_dir)
    files = RunDirectory(args.run_dir)
    for path in (files.eval_file, files.eval_figure):
        refuse_writing_over(path, "--run-dir", reads, folder=False)
    if not args.no_cache and args.cache_dir is not None:
        own = [(f"the run's {path.name}", path) for path in (*files.own_files(), files.eval_file, files.eval_figure)
               if path != files.cache_file]
        refuse_writing_over(args.cache_dir, "--cache-dir", reads + own, folder=False)


if __name__ == "__main__":
    exit_process(main())
