"""Plan an ICM job before starting it: its requests, prompt tokens, engine-computed tokens, hours and dollars.

    python scripts/plan_run.py --testbed truthfulQA --batch_size 256 --batches 10 --K 3000 --seeds 1 \\
        --route vllm --prefill-rate 5000 --calibration results/my-short-run
    python scripts/plan_run.py --testbed truthfulQA --batch_size 64 --K 3000 --probe http://127.0.0.1:8000
    python scripts/plan_run.py --validate results/benchmark/steady-32.json --calibration results/benchmark/steady-16.json \\
        --prefill-rate 900

It simulates a few steady-state iterations of the search on a model of the engine's prefix cache
(src/benchmarks/steady_state.py) to find what one pool score costs, multiplies by pool scores per iteration
(--pool-scores-per-iteration; or --calibration: a short ICM.py run of your own model, its --output-dir, or a
steady-state benchmark_icm.py --json report; otherwise 12 small SmolLM2 runs' figure, stated as an assumption),
and by K × batches × seeds. Hours come from a prefill rate (--prefill-rate, or --probe
measuring your own server); on the hosted route from its rate limits. Dollars from API_PRICE_INPUT_PER_MTOK /
API_PRICE_OUTPUT_PER_MTOK on the hosted route, from hours × --gpu-hour-price on a self-hosted one.
Formulas and sources: src/benchmarks/run_plan.py and src/benchmarks/prefill_probe.py.

--validate BENCH.json projects a steady-state benchmark's own setup (its testbed, pool, K, seed, layout, each
mode it ran) and prints the projection beside what it measured, per iteration and per pool score, with the
relative error.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
from pathlib import Path
from typing import Any, Optional

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings, check_url, load_settings
from core.process_exit import exit_process
from src.benchmarks.prefill_probe import probe_prefill, probe_requests
from src.benchmarks.run_plan import (
    DEFAULT_CACHE,
    PATTERNS,
    PROMPTS_PER_REQUEST_CAP,
    ROUTES,
    Job,
    PoolScoreCost,
    PoolScoreRate,
    Throughput,
    as_json,
    assumed_rate,
    calibrated_rate,
    estimated_tokens,
    given_rate,
    measured_iteration,
    measured_pool_score,
    probe_batch,
    probe_shape,
    project,
    read_benchmark,
    relative_error,
    run_rate,
    simulate_pool_score,
)
from src.benchmarks.steady_state import BlockTokens
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.cli.cli_numbers import Bounded
from src.data.record_files import parse_columns
from src.data.testbeds import TESTBED_SPECS, TESTBEDS, load_testbed_claims, sample_pool, shard_pool
from src.prompts.prompts import PROMPT_LAYOUTS
from src.run_directory.output_paths import data_files, refuse_run_file, refuse_writing_over
from src.run_directory.run_directory import write_atomically

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "icm"
PROBE_TOKENS_CAP = 4096  # the probe's default depth: the run's mean prompt length, at most this
VALIDATION_TOLERANCE = 0.15  # issue 24: within 15% of the measured engine tokens and wall time


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    job = parser.add_argument_group("the job")
    job.add_argument("--testbed", default="truthfulQA", choices=TESTBEDS)
    job.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with the paper's JSON files")
    job.add_argument("--data", type=Path, default=None, help="one file of records (as ICM.py's --data)")
    job.add_argument("--columns", default=None, metavar="FIELD=COLUMN,...", help="as ICM.py's --columns")
    job.add_argument("--batch_size", type=int, default=256, action=Bounded, above=0, help="claims in each pool (ICM.py's)")
    job.add_argument("--batches", type=int, default=None, action=Bounded, at_least=1,
                     help="pools of --batch_size claims (default 1; the paper's 2,560 claims: --batch_size 256 --batches 10)")
    job.add_argument("--num-batches", type=int, default=None, action=Bounded, at_least=1,
                     help="as ICM.py's --num-batches: the whole data split into this many pools (--batch_size unused)")
    job.add_argument("--K", type=int, default=3000, action=Bounded, at_least=1, help="iterations per run (ICM.py's)")
    job.add_argument("--seeds", type=int, default=1, action=Bounded, at_least=1,
                     help="runs per pool, each with another --seed (not ICM.py's --num_seed)")
    job.add_argument("--seed", type=int, default=0, action=Bounded, at_least=0, help="draws the simulated pool and search")
    job.add_argument("--prompt-layout", default="tree", choices=PROMPT_LAYOUTS)
    job.add_argument("--pattern", default="ours", choices=PATTERNS,
                     help="ours (this project's client) or reference (the reference code's request pattern)")
    job.add_argument("--route", default="vllm", choices=ROUTES, help="vllm (self-hosted server), external (hosted API), embedded")
    sim = parser.add_argument_group("the prefix-cache simulator")
    sim.add_argument("--tokens-per-claim", type=int, default=None, action=Bounded, above=0,
                     help="tokens of one claim shown as a demonstration: no tokenizer (default: the embedded model's)")
    sim.add_argument("--cache-tokens", type=int, default=None, action=Bounded, above=0,
                     help="the engine's KV cache in tokens (vLLM logs 'GPU KV cache size: N tokens'); default by route")
    sim.add_argument("--block-size", type=int, default=None, action=Bounded, above=0,
                     help="the cache block in tokens (vLLM: 16 on GPUs, 128 on CPUs); default by route")
    sim.add_argument("--simulate-K", type=int, default=8, action=Bounded, at_least=1,
                     help="steady-state iterations simulated to measure one pool score's cost")
    speed = parser.add_argument_group("speed and price")
    speed.add_argument("--prefill-rate", type=float, default=None, action=Bounded, above=0,
                       help="engine-computed prompt tokens per second of your server")
    speed.add_argument("--request-latency", type=float, default=None, action=Bounded, at_least=0,
                       help="seconds per request beside prefill (default 0, or the probe's)")
    speed.add_argument("--probe", default=None, metavar="URL", help="measure the rate on this server (vLLM or llama.cpp)")
    speed.add_argument("--probe-model", default=None, help="the model to probe (default: the server's first)")
    speed.add_argument("--probe-tokens", type=int, default=None, action=Bounded, at_least=64,
                       help="the probe's long tail in tokens (default: the tokens a pool score computes per prompt, at "
                            f"least 64, at most {PROBE_TOKENS_CAP}); the default prefix shrinks to keep the job's depth")
    speed.add_argument("--probe-prefix-tokens", type=int, default=None, action=Bounded, at_least=0,
                       help=f"the cached prefix before each timed tail (default: the job's mean prompt less the tail, at "
                            f"most {PROBE_TOKENS_CAP}; 0: fresh prompts)")
    speed.add_argument("--probe-prompts", type=int, default=None, action=Bounded, at_least=1, at_most=256,
                       help=f"prompts in each probe request (default: the job's per request, at most {PROMPTS_PER_REQUEST_CAP})")
    speed.add_argument("--probe-repeats", type=int, default=3, action=Bounded, at_least=1, at_most=20)
    speed.add_argument("--probe-timeout", type=float, default=120.0, action=Bounded, above=0, help="seconds per probe request")
    speed.add_argument("--requests-per-minute", type=float, default=None, action=Bounded, above=0,
                       help="hosted route's request limit (default API_REQUESTS_PER_MINUTE)")
    speed.add_argument("--tokens-per-minute", type=float, default=None, action=Bounded, above=0,
                       help="hosted route's prompt-token limit (default API_TOKENS_PER_MINUTE)")
    speed.add_argument("--gpu-hour-price", type=float, default=None, action=Bounded, at_least=0,
                       help="dollars per hour of the self-hosted server (all its GPUs)")
    speed.add_argument("--pool-scores-per-iteration", type=float, default=None, action=Bounded, at_least=0,
                       help="pool scores per iteration, your own figure (in place of --calibration)")
    speed.add_argument("--calibration", type=Path, default=None, metavar="BENCH.json|RUN_DIR",
                       help="pool scores per iteration measured: a benchmark_icm.py --regime steady --json report, or a "
                            "finished ICM.py run's --output-dir (its summary.json)")
    parser.add_argument("--validate", type=Path, default=None, metavar="BENCH.json",
                        help="project this steady-state benchmark's own setup and compare with what it measured")
    parser.add_argument("--secrets", type=Path, default=None, help="settings file (prices, rate limits)")
    parser.add_argument("--json", type=Path, default=None, help="also write the projection as JSON to this file")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    return run_main(lambda: plan(build_parser().parse_args(argv), argv))


def check_flags(args: argparse.Namespace) -> None:
    if args.prefill_rate is not None and args.probe:
        raise UserError("--prefill-rate and --probe both give the rate: pass one")
    if args.probe is not None:  # now, not after the minutes of simulation
        check_url("--probe", args.probe, "on the command line")
    if args.batches is not None and args.num_batches is not None:
        raise UserError("--batches (pools of --batch_size) and --num-batches (the data split) both count pools: pass one")
    if args.columns is not None:
        if args.data is None:
            raise UserError("--columns names the columns of --data FILE: pass --data, or drop --columns")
        parse_columns(args.columns)
    if args.calibration is not None and not (args.calibration.is_file() or args.calibration.is_dir()):
        raise UserError(f"--calibration {args.calibration}: no such file or folder: give the JSON that benchmark_icm.py "
                        "--regime steady --json wrote, or a finished ICM.py run's --output-dir")
    if args.validate is not None and not args.validate.is_file():
        raise UserError(f"--validate {args.validate}: no such file: give the JSON that benchmark_icm.py --regime steady --json wrote")
    if args.json is not None:
        refuse_writing_over(args.json, "--json", [*data_files(args.data_dir, args.data),
                                                 *[("the benchmark report", p) for p in (args.calibration, args.validate) if p]],
                            folder=False)
        refuse_run_file(args.json, "--json")


def plan(args: argparse.Namespace, argv: Optional[list[str]]) -> int:
    check_flags(args)
    settings = load_settings(args.secrets)
    command = "python scripts/plan_run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    # Pool scores per iteration, found once and before the simulation's minutes (a bad calibration is refused now).
    patterns = ([args.pattern] if args.validate is None
                else [m for m in read_benchmark(args.validate)["regimes"]["steady"]["modes"] if m in PATTERNS])
    rates = {pattern: rate_of(pattern, args.calibration, args.pool_scores_per_iteration,
                              allow_zero=args.validate is not None) for pattern in patterns}
    with contextlib.ExitStack() as stack:
        if args.validate is not None:
            report = validate(args, settings, stack, rates)
        else:
            report = plan_job(args, settings, stack, rates[args.pattern])
    report = {"command": command.strip(), **report}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.json, json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


# -- the pieces -------------------------------------------------------------------------------------------

def token_pieces(args: argparse.Namespace, stack: contextlib.ExitStack) -> tuple[BlockTokens, str]:
    if args.tokens_per_claim is not None:
        return estimated_tokens(args.tokens_per_claim), f"--tokens-per-claim {args.tokens_per_claim} (no tokenizer)"
    # The bundled model's tokenizer, whatever server the settings name: counting needs no server.
    api = stack.enter_context(ModelAPI(settings=Settings(), use_vllm=None, show_progress=False))
    return BlockTokens(api.tokenize), (f"the embedded {api.model}'s tokenizer (another model's counts differ; "
                                       "--tokens-per-claim gives your own estimate)")


def cache_of(args: argparse.Namespace, route: str) -> tuple[int, int, str]:
    capacity, block, note = DEFAULT_CACHE[route]
    if args.cache_tokens is None and args.block_size is None:
        return capacity, block, f"ASSUMED: {note}"
    capacity, block = args.cache_tokens or capacity, args.block_size or block
    return capacity, block, f"{block}-token blocks, a cache of {capacity:,} tokens (given)"


def load_pool(args: argparse.Namespace, testbed: str, data_dir: Path, pool_size: int, seed: int,
              num_batches: Optional[int]) -> tuple[list[dict], random.Random, str]:
    """The first pool of the job as the run draws it, and the RNG that goes on to draw its starting labels."""
    columns = parse_columns(args.columns) if args.columns else None
    if testbed != "demo" and args.data is None and not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir} is not a folder: point it at the paper's JSON files, or pass --data FILE")
    claims, source, _ = load_testbed_claims(testbed, data_dir, args.data, True, columns)
    rng = random.Random(seed)
    if num_batches is not None:
        pool = shard_pool(claims, TESTBED_SPECS[testbed], num_batches, 0, seed, source)
        return pool, rng, f"shard 1 of {num_batches} of {source} ({len(claims)} claims)"
    return sample_pool(claims, TESTBED_SPECS[testbed], pool_size, rng, source), rng, f"{pool_size} claims drawn from {source}"


def rate_of(pattern: str, calibration: Optional[Path], given: Optional[float] = None,
            allow_zero: bool = False) -> PoolScoreRate:
    """Pool scores per iteration of ``pattern``: given, else measured in ``calibration`` if it ran that mode,
    else assumed."""
    if given is not None:
        return given_rate(given)
    if calibration is not None and calibration.is_dir():
        if pattern == "ours":
            return run_rate(calibration)
        print(f"note: {calibration} is a run of ours; the {pattern!r} pattern's pool scores per iteration are assumed",
              file=sys.stderr)
        return assumed_rate(pattern)
    if calibration is not None and pattern in read_benchmark(calibration)["regimes"]["steady"]["modes"]:
        return calibrated_rate(calibration, pattern, allow_zero)
    if calibration is not None:
        print(f"note: {calibration} has no steady-state {pattern!r} measurement; its pool scores per iteration are assumed",
              file=sys.stderr)
    return assumed_rate(pattern)


def throughput_of(args: argparse.Namespace, settings: Any, route: str, cost: PoolScoreCost) -> tuple[Throughput, Optional[dict]]:
    if route == "external":
        rpm = args.requests_per_minute or settings.api_requests_per_minute
        tpm = args.tokens_per_minute or settings.api_tokens_per_minute
        return Throughput(requests_per_minute=rpm, tokens_per_minute=tpm,
                          source=f"hosted rate limits: {rpm or 'unset'} requests and {tpm or 'unset'} prompt tokens per minute"), None
    latency = args.request_latency or 0.0
    if args.prefill_rate is not None:
        return Throughput(args.prefill_rate, latency, source=f"--prefill-rate {args.prefill_rate:g} tokens/s (given), "
                                                             f"{latency:g} s per request"), None
    if args.probe:
        prefix, tail = probe_shape(cost, args.probe_prefix_tokens, args.probe_tokens, PROBE_TOKENS_CAP)
        batch = probe_batch(cost, args.probe_prompts)
        print(f"probing {args.probe}: {probe_requests(prefix, args.probe_repeats)} requests of {batch} prompt(s), tails of "
              f"about 16 and {tail} tokens behind {f'a cached prefix of about {prefix} tokens' if prefix else 'nothing (fresh prompts)'} ...",
              file=sys.stderr, flush=True)
        found = probe_prefill(args.probe, tail, prefix_tokens=prefix, prompts_per_request=batch, repeats=args.probe_repeats,
                              timeout_seconds=args.probe_timeout, model=args.probe_model, settings=load_settings(args.secrets))
        latency = found.request_latency if args.request_latency is None else args.request_latency
        behind = f" behind a cached prefix of {found.prefix_tokens} words" if found.prefix_tokens else " (fresh prompts)"
        return Throughput(found.prefill_rate, latency, source=(
            f"probed {found.url} ({found.model}): requests of {found.prompts_per_request} prompt(s) computed "
            f"{found.short_tokens:.0f} tokens in {found.short_seconds:.3f} s with short tails, {found.long_tokens:.0f} in "
            f"{found.long_seconds:.3f} s with long ones{behind} (medians of {args.probe_repeats}; tokens from "
            f"{found.tokens_counted_by}) -> {found.prefill_rate:,.0f} tokens/s, {latency:.3f} s per request; on a "
            "server nobody else used meanwhile")), as_json(found)
    return Throughput(None, latency, source="none: pass --prefill-rate or --probe URL for hours"), None


def note_assumed(rate: PoolScoreRate, cache_note: str) -> None:
    if rate.assumed:
        print(f"warning: pool scores per iteration are {rate.source}", file=sys.stderr)
    if cache_note.startswith("ASSUMED"):
        print(f"warning: the prefix cache is {cache_note}", file=sys.stderr)


# -- a job ------------------------------------------------------------------------------------------------

def plan_job(args: argparse.Namespace, settings: Any, stack: contextlib.ExitStack, rate: PoolScoreRate) -> dict[str, Any]:
    route, pattern = args.route, args.pattern
    if route == "external" and args.gpu_hour_price is not None:
        raise UserError("--gpu-hour-price prices a self-hosted server; the external route is priced by "
                        "API_PRICE_INPUT_PER_MTOK and API_PRICE_OUTPUT_PER_MTOK")
    if route == "external" and (args.prefill_rate is not None or args.probe):
        raise UserError("--prefill-rate and --probe time a self-hosted server; on the external route the rate limits "
                        "(--requests-per-minute, --tokens-per-minute) bound the time")
    pool, rng, pool_note = load_pool(args, args.testbed, args.data_dir, args.batch_size, args.seed, args.num_batches)
    batches = args.num_batches or args.batches or 1
    capacity, block, cache_note = cache_of(args, route)
    tokens, tokens_note = token_pieces(args, stack)
    print(f"simulating {args.simulate_K} steady-state iterations of a {len(pool)}-claim pool ...", file=sys.stderr, flush=True)
    cost = simulate_pool_score(pool, args.prompt_layout, tokens, capacity, block, pattern, args.simulate_K, rng)
    throughput, probe = throughput_of(args, settings, route, cost)
    job = Job(len(pool), batches, args.seeds, args.K)
    prices = (settings.api_price_input_per_mtok, settings.api_price_output_per_mtok)
    projection = project(cost, rate, throughput, job, route, prices, args.gpu_hour_price)
    assumptions = {
        "pool": pool_note + (f"; every one of the {batches} pools costs what this one does" if batches > 1 else ""),
        "tokens": tokens_note,
        "cache": cache_note,
        "pool_score_cost": cost.source,
        "pool_scores_per_iteration": rate.source,
        "simulator_pool_scores_per_iteration": (f"{cost.simulated_pool_scores_per_iteration:.3g} (the stand-in's own, at "
                                                 "chance; not used)"),
        "iterations": ("every pool score priced as one of the full pool; the growing phase (shorter prompts), the "
                       "first scoring and the final predictions are not priced apart"),
        "throughput": throughput.source,
        "hours": projection["notes"]["hours"],
        "dollars": projection["notes"]["dollars"],
    }
    setup = {"testbed": args.testbed, "data": str(args.data) if args.data else None, "pool_size": len(pool), "batches": batches,
             "seeds": args.seeds, "K": args.K, "prompt_layout": args.prompt_layout, "pattern": pattern, "route": route,
             "runs": job.runs, "iterations": job.iterations}
    print_projection(setup, projection, assumptions, rate, cache_note)
    return {"setup": setup, "assumptions": assumptions, "pool_score_cost": as_json(cost), "throughput": as_json(throughput),
            "probe": probe, "projection": projection}


# -- validation -------------------------------------------------------------------------------------------

# The figures the 15% tolerance is checked on: per iteration (what the planner multiplies by K) and per pool score
# (the simulator's and the rate's own part, testable even when the model proposed no flip).
TOLERATED = ("computed_tokens", "seconds", "computed_tokens_per_pool_score", "seconds_per_pool_score")


def validate(args: argparse.Namespace, settings: Any, stack: contextlib.ExitStack,
             rates: dict[str, PoolScoreRate]) -> dict[str, Any]:
    """Project each mode of a steady-state benchmark with its own setup, beside what it measured per iteration
    (means: total / iterations after the first scoring)."""
    report = read_benchmark(args.validate)
    bench = report.get("settings", {})
    try:
        testbed, pool_size, K, seed = bench["testbed"], int(bench["pool"]), int(bench["K"]), int(bench["seed"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{args.validate}: its settings lack testbed, pool, K or seed: give a report of benchmark_icm.py --json") from None
    route = "vllm" if bench.get("base_url") else "embedded"
    data_dir = Path(bench.get("data_dir") or args.data_dir)
    layout = bench.get("layout") or "tree"
    capacity, block, cache_note = cache_of(args, route)
    tokens, tokens_note = token_pieces(args, stack)
    if args.calibration is not None and args.calibration.resolve() == args.validate.resolve():
        print("warning: --calibration is the file being validated, so pool scores per iteration are taken from the "
              "measurement they are checked against: only the simulator's tokens per pool score and the rate are tested. "
              "Calibrate with another benchmark (another pool size)", file=sys.stderr)
    rows, cost = [], None
    for mode in report["regimes"]["steady"]["modes"]:
        if mode not in PATTERNS:
            continue
        pool, rng, _ = load_pool(args, testbed, data_dir, pool_size, seed, None)
        print(f"simulating {args.simulate_K} steady-state iterations of {mode} on a {len(pool)}-claim pool ...",
              file=sys.stderr, flush=True)
        cost = simulate_pool_score(pool, layout if mode == "ours" else "reference", tokens, capacity, block, mode,
                                   args.simulate_K, rng)
        rate = rates[mode]
        throughput, _ = throughput_of(args, settings, route, cost)
        projection = project(cost, rate, throughput, Job(len(pool), 1, 1, K), route)["per_iteration"]
        measured = measured_iteration(report, mode, args.validate)
        hours = projection["hours"]
        projected = {"computed_tokens": projection["computed_tokens"], "seconds": None if hours is None else hours * 3600,
                     "pool_scores": projection["pool_scores"], "requests": projection["requests"],
                     "prompt_tokens": projection["prompt_tokens"]}
        one_score = measured_pool_score(report, mode, args.validate)
        latency = throughput.request_latency * cost.requests
        projected["computed_tokens_per_pool_score"] = cost.computed_tokens
        projected["seconds_per_pool_score"] = (None if throughput.prefill_rate is None
                                               else cost.computed_tokens / throughput.prefill_rate + latency)
        measured = {**measured, "computed_tokens_per_pool_score": one_score["computed_tokens"],
                    "seconds_per_pool_score": one_score["seconds"]}
        errors = {k: relative_error(projected[k], measured[k]) for k in projected}
        rows.append({"mode": mode, "projected": projected, "measured": {k: measured[k] for k in projected},
                     "relative_error": errors, "pool_scores_from": rate.source, "throughput": throughput.source,
                     "benchmark_engine_rate": measured["engine_rate"],
                     "within_tolerance": {k: (None if e is None else abs(e) <= VALIDATION_TOLERANCE)
                                          for k, e in errors.items() if k in TOLERATED}})
    setup = {"benchmark": str(args.validate), "testbed": testbed, "pool_size": pool_size, "K": K, "seed": seed,
             "prompt_layout": layout, "route": route, "cache": cache_note, "tokens": tokens_note}
    print_validation(setup, rows)
    return {"validation": {"setup": setup, "tolerance": VALIDATION_TOLERANCE, "modes": rows}}


# -- printing ---------------------------------------------------------------------------------------------

def shown(value: Optional[float], kind: str) -> str:
    if value is None:
        return "—"
    if kind == "hours":
        return f"{value:.4f}" if value < 1 else f"{value:,.3g}" if value < 1000 else f"{value:,.0f}"
    if kind == "dollars":
        return f"${value:,.2f}"
    if kind == "error":
        return f"{value:+.1%}"
    if abs(value) >= 1e9:
        return f"{value / 1e9:,.2f}B"
    if abs(value) >= 1e6:
        return f"{value / 1e6:,.2f}M"
    return f"{value:,.1f}" if value < 100 and value != int(value) else f"{value:,.0f}"


ROWS = (("requests", "requests", "count"), ("prompt tokens sent", "prompt_tokens", "count"),
        ("engine-computed tokens", "computed_tokens", "count"), ("hours", "hours", "hours"), ("dollars", "dollars", "dollars"))


def print_projection(setup: dict, projection: dict, assumptions: dict, rate: PoolScoreRate, cache_note: str) -> None:
    note_assumed(rate, cache_note)
    print(f"\nICM job: {setup['batches']} pool(s) of {setup['pool_size']} claims × {setup['seeds']} seed(s) × K={setup['K']} "
          f"= {setup['iterations']:,} iterations; {setup['pattern']} pattern, {setup['prompt_layout']} layout, "
          f"{setup['route']} route\n")
    columns = (("per pool score", "per_pool_score"), ("per iteration", "per_iteration"), (f"per run (K={setup['K']})", "per_run"),
               ("per claim", "per_claim"), ("whole job", "job"))
    print("| | " + " | ".join(name for name, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, key, kind in ROWS:
        print(f"| {label} | " + " | ".join(shown(projection[block].get(key), kind) for _, block in columns) + " |")
    print("\nassumptions:")
    for name, text in assumptions.items():
        print(f"  {name}: {text}")


def print_validation(setup: dict, rows: list[dict]) -> None:
    print(f"\nvalidation against {setup['benchmark']}: {setup['testbed']} pool {setup['pool_size']}, K={setup['K']}, "
          f"seed {setup['seed']}, {setup['route']} engine; per iteration after the first scoring (means)\n")
    print("| mode | figure | projected | measured | relative error |")
    print("|---|---|---|---|---|")
    for row in rows:
        for label, key in (("pool scores", "pool_scores"), ("requests", "requests"), ("prompt tokens sent", "prompt_tokens"),
                           ("engine-computed tokens", "computed_tokens"), ("wall seconds", "seconds"),
                           ("engine tokens per pool score (whole run)", "computed_tokens_per_pool_score"),
                           ("engine seconds per pool score (whole run)", "seconds_per_pool_score")):
            print(f"| {row['mode']} | {label} | {shown(row['projected'][key], 'count')} | {shown(row['measured'][key], 'count')} "
                  f"| {shown(row['relative_error'][key], 'error')} |")
    print(f"\ncache: {setup['cache']}; tokens: {setup['tokens']}")
    for row in rows:
        engine = row["benchmark_engine_rate"]
        print(f"{row['mode']}: pool scores per iteration {row['pool_scores_from']}; throughput {row['throughput']}; "
              f"the benchmark's own engine rate {'—' if engine is None else format(engine, ',.0f')} tokens/s")
        verdicts = ", ".join(f"{k} {'within' if ok else 'NOT within'} {VALIDATION_TOLERANCE:.0%}"
                             for k, ok in row["within_tolerance"].items() if ok is not None)
        if verdicts:
            print(f"  {verdicts}")


if __name__ == "__main__":
    exit_process(main())
