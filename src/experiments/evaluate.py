"""Evaluate a run's labels on the held-out test split against the paper's baselines.

    python src/experiments/evaluate.py --run-dir OUT [--testbed truthfulQA --data-dir DIR] [--limit 200]

Writes OUT/eval.json (accuracy, 95% bootstrap interval and n per condition) and OUT/eval.png.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.llm_api.response_cache import CACHE_FILE
from core.llm_api.settings import load_settings
from core.process_exit import exit_process
from src.experiments.cli_errors import OneLineParser, UserError, run_main
from src.experiments.cli_numbers import Bounded
from src.experiments.evaluation import CHANCE, evaluate_conditions
from src.experiments.figures import accuracy_chart
from src.experiments.output_paths import RUN_OWN_FILES, data_files, recorded_data_files, refuse_writing_over
from src.experiments.run_outputs import atomic_path, write_atomically
from src.experiments.run_reading import label_row_problem, read_json_lines, read_json_object, run_settings
from src.experiments.testbeds import TESTBED_SPECS, data_file_for, demo_records, normalise_records, read_json_records
from src.pipeline.pipeline import ScoringOptions, ScoringPipeline


class EvaluationError(UserError):
    pass


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """The run's settings and its labels.jsonl rows."""
    labels_path = run_dir / "labels.jsonl"
    if not labels_path.is_file():
        raise EvaluationError(f"--run-dir {run_dir}: no labels.jsonl there; run ICM.py first (or point at its --output-dir)")
    settings = run_settings(run_dir, required=True)
    if settings.get("testbed") not in TESTBED_SPECS:
        raise EvaluationError(f"{run_dir}: its recorded settings name no known testbed ({settings.get('testbed')!r}); "
                              "restore run.json from a copy")
    rows = read_json_lines(labels_path, f"restore it, or write it again with python src/experiments/ICM.py --resume {run_dir}",
                           check=label_row_problem)
    return settings, rows


def test_split(testbed: str, data_dir: Optional[Path], test_file: Optional[Path], pool_source: Optional[str],
               pool_groups: set, use_gold_consistency: bool) -> tuple[list[dict], str, int]:
    """Test claims with gold labels, minus the pool's groups when the pool came from the same file."""
    spec = TESTBED_SPECS[testbed]
    if testbed == "demo" and test_file is None:
        records, source = demo_records(), "built-in demo"
    else:
        if test_file is None:
            if testbed == "custom":
                raise EvaluationError("--testbed custom needs --test-data FILE with gold labels")
            test_file = data_file_for(spec, data_dir)[0].with_name(f"test_{spec.file_stem}.json")
        records, source = read_json_records(test_file), str(test_file)
    claims = normalise_records(records, spec, source, use_gold_consistency)
    same_file = source == pool_source or (pool_source and Path(pool_source).resolve() == Path(source).resolve())
    kept = [c for c in claims if not (same_file and c["consistency_id"] in pool_groups)]
    if any(c["label"] is None for c in kept):
        raise EvaluationError(f"{source}: every test record needs a gold label to measure accuracy")
    if not kept:
        raise EvaluationError(f"{source}: no test claims left once the pool's groups are excluded")
    return kept, source, len(claims) - len(kept)


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="an ICM.py --output-dir")
    parser.add_argument("--testbed", default=None, help="default: the run's")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: the run's")
    parser.add_argument("--test-data", type=Path, default=None, help="a test JSON file (default: test_<testbed>.json in --data-dir)")
    parser.add_argument("--limit", type=int, default=None, action=Bounded, at_least=1,
                        help="evaluate on this many test claims, drawn at random (default: all)")
    parser.add_argument("--max-demos", type=int, default=None, action=Bounded, at_least=1,
                        help="at most this many demonstrations (default: all labelled)")
    parser.add_argument("--model", default=None, help="default: the run's")
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
    settings, rows = read_run(args.run_dir)
    testbed = args.testbed or settings["testbed"]
    if testbed != settings["testbed"]:
        raise EvaluationError(f"--testbed {testbed}: the run labelled {settings['testbed']}; evaluate it on that")
    data_dir = args.data_dir or (Path(settings["data_dir"]) if settings.get("data_dir") else None)
    summary_path = args.run_dir / "summary.json"
    pool_source = read_json_object(summary_path, f"restore it, or write it again with python src/experiments/ICM.py "
                                                 f"--resume {args.run_dir}").get("data_source") if summary_path.is_file() else None
    refuse_writing_over_inputs(args, settings)
    pool_groups = {r["consistency_id"] for r in rows}
    claims, source, excluded = test_split(testbed, data_dir, args.test_data, pool_source, pool_groups,
                                          not settings.get("no_gold_consistency", False))
    if args.limit is not None:
        claims = random.Random(args.seed).sample(claims, min(args.limit, len(claims)))
    demos = [r for r in rows if r["label"] is not None][: args.max_demos]
    if not demos:
        raise EvaluationError(f"{args.run_dir}/labels.jsonl has no labelled claims to use as demonstrations")

    options = ScoringOptions(
        model=args.model or settings.get("model"), use_vllm=settings.get("use_vllm"),
        deterministic=settings.get("deterministic", False), show_progress=not args.no_progress,
        exact_label_logprobs=settings.get("label_logprobs", "auto") == "auto",
        label_style=settings.get("label_style", "space-in-label"), token_match=settings.get("token_match", "whole"),
        cache_dir=None if args.no_cache else (args.cache_dir or args.run_dir),
    )
    with ScoringPipeline(options, load_settings()) as pipeline:
        print(f"route: {pipeline.route}  model: {pipeline.model_api.model}  test claims: {len(claims)} from {source}"
              f"  demonstrations: {len(demos)}", file=sys.stderr)
        results = evaluate_conditions(pipeline.model_api, claims, demos, label_style=options.label_style,
                                      token_match=options.token_match, seed=args.seed)
        model = pipeline.model_api.model
        route = pipeline.route
    gold_rate = sum(c["label"] for c in claims) / len(claims)
    report = {
        "testbed": testbed, "test_source": source, "excluded_pool_claims": excluded, "n_test": len(claims),
        "n_demos": len(demos), "route": route, "model": model, "seed": args.seed, "chance": CHANCE,
        "majority_class_rate": max(gold_rate, 1 - gold_rate),
        "conditions": {name: result.as_dict() for name, result in results.items()},
    }
    write_atomically(args.run_dir / "eval.json", json.dumps(report, indent=2) + "\n")
    title = f"{testbed} on {model}\n{len(demos)} demonstrations, {len(claims)} test claims, 95% bootstrap CI"
    with atomic_path(args.run_dir / "eval.png") as temporary:
        accuracy_chart(report["conditions"], title, CHANCE, temporary)
    for name, result in report["conditions"].items():
        print(f"  {name:14s} {100 * result['accuracy']:5.1f}%  [{100 * result['ci_low']:.1f}, {100 * result['ci_high']:.1f}]  n={result['n']}")
    print(f"wrote {args.run_dir}/eval.json and eval.png", file=sys.stderr)
    return report


def refuse_writing_over_inputs(args: argparse.Namespace, settings: dict) -> None:
    """eval.json, eval.png and the response cache must not land on the test data, the run's data or its files."""
    reads = ([("the --test-data file", args.test_data)] if args.test_data else []) + recorded_data_files(settings) + \
        data_files(args.data_dir)
    for name in ("eval.json", "eval.png"):
        refuse_writing_over(args.run_dir / name, "--run-dir", reads, folder=False)
    if not args.no_cache and args.cache_dir is not None:
        own = [(f"the run's {name}", args.run_dir / name) for name in (*RUN_OWN_FILES, "eval.json", "eval.png")
               if name != CACHE_FILE]
        refuse_writing_over(args.cache_dir, "--cache-dir", reads + own, folder=False)


if __name__ == "__main__":
    exit_process(main())
