"""What a whole ICM job will cost, projected before it starts: requests, prompt tokens, engine-computed tokens,
hours and dollars for every batch and seed (scripts/plan_run.py is its command line).

The projection multiplies three factors, each from its own source:

- **cost of one pool score** (``PoolScoreCost``): requests, prompt tokens sent and engine-computed prompt tokens,
  from the prefix-cache simulator (src/benchmarks/steady_state.py ``predicted_steady_state``: the real search from
  a fully labelled pool, on a stand-in engine whose token counts go through block_cache.py's model of vLLM's
  prefix cache). Its per-pool-score counts depend only on the prompts, the layout and the cache, so they are used
  as they are; its pool scores per iteration are not (its stand-in answers at chance).
- **pool scores per iteration** (``PoolScoreRate``): given (``--pool-scores-per-iteration``), or measured
  (``--calibration``: a finished ICM run's summary.json, or benchmark_icm.py --regime steady), or 12 small
  SmolLM2 runs' figure, stated as an assumption. An iteration computes a pool score only when its prediction
  disagrees with the claim's label (a proposal) or labels a new claim, so this is the model's figure, not the
  engine's.
- **time per engine token** (``Throughput``): a prefill rate in engine-computed tokens per second and a fixed
  latency per request, given or measured by a probe (src/benchmarks/prefill_probe.py), plus the client's own
  time per iteration from the calibration.

Every pool score is priced as one of the full pool. The growing phase (fewer labelled claims, shorter prompts)
and each run's first scoring and final predictions are not priced separately.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from core.errors import UserError
from core.llm_api.completions_request import MAX_TOKENS
from src.benchmarks.block_cache import BLOCK_SIZE
from src.benchmarks.prefill_probe import MIN_LONG_WORDS
from src.benchmarks.steady_state import BlockTokens, predicted_steady_state
from src.pipeline.scoring_cost import INPUT_PRICE_SETTING, OUTPUT_PRICE_SETTING, TOKENS_PER_PRICE_UNIT
from src.run_directory.run_reading import run_summary

ROUTES = ("vllm", "external", "embedded")
PATTERNS = ("ours", "reference")
SECONDS_PER_HOUR = 3600

# The cache model's defaults per route, when --cache-tokens / --block-size are not given.
DEFAULT_CACHE = {
    # 16-token blocks: vLLM's GPU default (block_cache.BLOCK_SIZE). 100k tokens: a modest GPU KV cache; at pool 256
    # the tree's hit rate is flat from 100k to 1M tokens (README, "At GPU scale"), the reference layout's is not.
    "vllm": (100_000, BLOCK_SIZE, ("vLLM's GPU block of 16 tokens and a KV cache of 100,000 tokens (set --cache-tokens "
                                   "to the 'GPU KV cache size' your server logs at start)")),
    # llama.cpp keeps one slot's prompt and a RAM prompt cache; token by token, a few thousand tokens
    # (README, "The steady state, predicted"). 8192 is EMBEDDED_CTX_PER_SLOT's default.
    "embedded": (8192, 1, "llama.cpp's single slot as a cache of 8,192 tokens (EMBEDDED_CTX_PER_SLOT) in 1-token blocks"),
    # A hosted API bills every prompt token at list price, whatever it caches, and its computed tokens are not
    # reported: the cache model decides nothing billed here, so a cache that never evicts keeps the simulation cheap.
    "external": (10**9, BLOCK_SIZE, "no cache discount: a hosted API bills every prompt token sent"),
}

PROMPTS_PER_REQUEST_CAP = 16  # the probe's default batch at most: enough to fill llama.cpp's slots, and short

# Pool scores computed per iteration when neither --calibration nor --pool-scores-per-iteration is given: 12 ICM
# runs on the embedded SmolLM2-135M (issue 23's sweep and comparison: TruthfulQA pools of 8 claims, 4 seed labels,
# K=32; their summary.json files). Ours: the pool scores they computed. The reference pattern computes again what
# ours read from its memo, except the prediction of a labelled claim (a single prompt there, counted as a request):
# computed + reused - (iterations - single predictions). Issue 24's "15 pool scores in 8 iterations" was the first
# scoring's repair of a random labelling; its iterations computed none (benchmark_icm.py --regime steady now
# reports them apart).
ASSUMED_POOL_SCORES = {
    "ours": (111, 384, "ours: 111 pool scores computed"),
    "reference": (321, 384, "the reference pattern: 321 = 111 computed + 531 memo hits - 321 predictions read from a pool score"),
}


@dataclass(frozen=True)
class PoolScoreCost:
    """What one pool score costs, on the simulator. Tokens are prompt tokens; ``requests`` is what our client
    sends on a self-hosted route (ours: one batched request; the reference pattern: one per prompt, with its
    predictions and decision queries); ``prompts`` the prompts in it."""
    pool_size: int
    prompts: float
    requests: float
    prompt_tokens: float
    computed_tokens: float
    mean_prompt_tokens: float  # prompt tokens / prompts
    simulated_pool_scores_per_iteration: float  # the stand-in's own rate: too low for a real model (see module doc)
    cache_tokens: int
    block_size: int
    tokens_per_demonstration: float  # mean tokens of one claim shown as a demonstration, with its separator

    @property
    def source(self) -> str:
        return (f"prefix-cache simulator (src/benchmarks/steady_state.py): {self.pool_size} claims, "
                f"{self.block_size}-token blocks, cache {self.cache_tokens:,} tokens")


def probe_shape(cost: PoolScoreCost, prefix_tokens: Optional[int], tail_tokens: Optional[int],
                depth_cap: int) -> tuple[int, int]:
    """The probe's (cached prefix, long tail) in tokens for a job whose pool score costs ``cost``: the tail is what a
    pool score computes per prompt (at least MIN_LONG_WORDS), the prefix the mean prompt less that tail, so the
    timed tokens sit where a pool score's do; the default tail within ``depth_cap``, and the default prefix so
    that prefix and tail stay within it (a given tail as long as the mean prompt leaves no prefix). A value given
    (not None) is used as it is."""
    tail = tail_tokens or min(depth_cap, max(MIN_LONG_WORDS, round(cost.computed_tokens / max(cost.prompts, 1.0))))
    if prefix_tokens is not None:
        return prefix_tokens, tail
    return max(0, min(depth_cap, round(cost.mean_prompt_tokens)) - tail), tail


def probe_batch(cost: PoolScoreCost, prompts_per_request: Optional[int]) -> int:
    """Prompts in each timed request: given, or the job's prompts per request (a pool score's, on its route), at
    most PROMPTS_PER_REQUEST_CAP."""
    if prompts_per_request is not None:
        return prompts_per_request
    return max(1, min(PROMPTS_PER_REQUEST_CAP, round(cost.prompts / max(cost.requests, 1.0))))


def simulate_pool_score(pool: Sequence[dict], layout: str, tokens: BlockTokens, cache_tokens: int, block_size: int,
                        pattern: str, simulate_K: int, rng: random.Random) -> PoolScoreCost:
    """Run ``simulate_K`` steady-state iterations of ``pattern`` on the cache model and divide its counts by the
    pool scores it computed. ``rng`` drew ``pool`` (it goes on to draw the starting labels and the search's
    choices, as in benchmark_icm.py). Raises UserError when a prompt is longer than the cache, or when no flip
    was proposed in ``simulate_K`` iterations (then there is nothing to divide by)."""
    try:
        prediction = predicted_steady_state(list(pool), layout, tokens, cache_tokens, block_size, pattern, simulate_K, rng)
    except ValueError as exc:
        raise UserError(f"--cache-tokens {cache_tokens}: {exc}; give a larger cache") from None
    spread = prediction.per_iteration
    scores = spread["pool_scores"]["total"]
    if not scores:
        raise UserError(f"the simulator proposed no flip in {simulate_K} iterations, so it computed no pool score to "
                        "measure: raise --simulate-K")
    # Ours sends each labelled claim's prompt once per pool score; the reference pattern sends each prompt alone.
    prompts = len(pool) if pattern == "ours" else spread["requests"]["total"] / scores
    known = list(tokens._known.values())
    return PoolScoreCost(
        pool_size=len(pool), prompts=prompts, requests=spread["requests"]["total"] / scores,
        prompt_tokens=spread["prompt_tokens"]["total"] / scores, computed_tokens=spread["computed_tokens"]["total"] / scores,
        mean_prompt_tokens=spread["prompt_tokens"]["total"] / scores / prompts,
        simulated_pool_scores_per_iteration=scores / prediction.iterations, cache_tokens=cache_tokens,
        block_size=block_size, tokens_per_demonstration=(sum(map(len, known)) / len(known) if known else 0.0),
    )


def estimated_tokens(tokens_per_claim: int) -> BlockTokens:
    """Token pieces for a tokens-per-claim estimate, no tokenizer: each text becomes ``tokens_per_claim`` tokens,
    all but the last standing for the text without its last word, the last for the whole text. So a claim shown
    under either label (texts that differ in their last word) shares all but its last token, as real tokens do,
    and different claims share none."""
    def tokenize(texts: Sequence[str]) -> list[list[int]]:
        pieces = []
        for text in texts:
            stem = text.rstrip().rsplit(None, 1)[0] if text.strip() else text
            pieces.append([hash((stem, i)) for i in range(tokens_per_claim - 1)] + [hash(text)])
        return pieces

    return BlockTokens(tokenize)


@dataclass(frozen=True)
class PoolScoreRate:
    """Pool scores computed per iteration, and the client's own seconds per iteration (outside the engine)."""
    pool_scores_per_iteration: float
    overhead_seconds_per_iteration: float
    source: str
    assumed: bool


def assumed_rate(pattern: str) -> PoolScoreRate:
    scores, iterations, who = ASSUMED_POOL_SCORES[pattern]
    return PoolScoreRate(scores / iterations, 0.0, assumed=True, source=(
        f"ASSUMED, not measured for this setup: {scores / iterations:.3g} per iteration ({who} in {iterations} "
        "iterations of 12 ICM runs on SmolLM2-135M, TruthfulQA pools of 8 claims, K=32, first scoring and growing "
        "phase included). How often a prediction disagrees with a label is the model's: pass --calibration with a "
        "short run of your own (its --output-dir), or --pool-scores-per-iteration. Client overhead taken as 0 "
        "(measured 0.01-0.1% of wall time)"))


def given_rate(pool_scores_per_iteration: float) -> PoolScoreRate:
    """Pool scores per iteration given on the command line (--pool-scores-per-iteration): the researcher's own
    figure, e.g. a proposal rate times pool scores per proposal from their model's log.jsonl and summary.json."""
    return PoolScoreRate(pool_scores_per_iteration, 0.0, assumed=False, source=(
        f"--pool-scores-per-iteration {pool_scores_per_iteration:g} (given); client overhead taken as 0"))


def run_rate(run_dir: Path) -> PoolScoreRate:
    """Pool scores per iteration of a finished ICM run of your own (its summary.json: pool_scores_computed /
    iterations, its first scoring and growing phase included, memo hits excluded): the calibration closest to
    the job, since how often a model's prediction disagrees with a label (a proposal) is the model's. UserError
    when the folder holds no ICM run summary with iterations."""
    summary = run_summary(Path(run_dir))
    if summary is None:
        raise UserError(f"--calibration {run_dir}: a folder without summary.json: give a finished ICM.py run's "
                        "--output-dir, or a benchmark_icm.py --json file")
    try:
        scores, iterations = int(summary["pool_scores_computed"]), int(summary["iterations"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"--calibration {run_dir}: its summary.json lacks pool_scores_computed or iterations") from None
    if summary.get("labeller", "icm") != "icm" or iterations <= 0:
        raise UserError(f"--calibration {run_dir}: not an ICM search with iterations (labeller "
                        f"{summary.get('labeller')!r}, {iterations} iterations): give an ICM.py run")
    settings = summary.get("settings") or {}
    return PoolScoreRate(scores / iterations, 0.0, assumed=False, source=(
        f"measured in the run {run_dir} ({summary.get('testbed')}, pool {settings.get('batch_size')}, "
        f"{iterations} iterations, model {summary.get('model')}): {scores} pool scores, {scores / iterations:.3g} per "
        "iteration, its first scoring and growing phase included; client overhead taken as 0"))


def measured_pool_score(report: dict[str, Any], mode: str, path: Path) -> dict[str, Optional[float]]:
    """What one pool score cost in a benchmark, over the whole run (first scoring included): computed_tokens and
    engine seconds per pool score computed (None when it computed none). UserError when a figure is missing."""
    entry = report["regimes"]["steady"]["modes"].get(mode)
    try:
        scores = int(entry["pool_scores_computed"])
        tokens, seconds = float(entry["engine_computed_tokens"]), float(entry["engine_seconds"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: regimes.steady.modes.{mode} lacks pool_scores_computed, engine_computed_tokens or "
                        "engine_seconds: give a report of this version's benchmark_icm.py") from None
    return {"pool_scores": scores, "computed_tokens": tokens / scores if scores else None,
            "seconds": seconds / scores if scores else None}


def read_benchmark(path: Path) -> dict[str, Any]:
    """A benchmark_icm.py --json report; UserError if it can't be read or holds no steady-state regime."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file: give the JSON that benchmark_icm.py --regime steady --json wrote") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} can't be read as JSON ({type(exc).__name__}): give the file benchmark_icm.py --json wrote") from None
    steady = report.get("regimes", {}).get("steady") if isinstance(report, dict) and isinstance(report.get("regimes"), dict) else None
    if not isinstance(steady, dict) or not isinstance(steady.get("modes"), dict) or not steady["modes"]:
        raise UserError(f"{path} holds no steady-state measurement (regimes.steady.modes): run benchmark_icm.py "
                        "--regime steady ... --json FILE")
    return report


def measured_iteration(report: dict[str, Any], mode: str, path: Path) -> dict[str, float]:
    """The mean per iteration after the first scoring of ``mode`` in the steady regime: pool_scores,
    computed_tokens, prompt_tokens, requests, seconds (each total / iterations), and overhead_seconds (the
    client's time outside the engine, (wall - engine seconds) / iterations, the first scoring included).
    UserError when the mode or a figure is missing."""
    entry = report["regimes"]["steady"]["modes"].get(mode)
    if not isinstance(entry, dict):
        raise UserError(f"{path} has no steady-state measurement of {mode!r} (it has: "
                        f"{', '.join(report['regimes']['steady']['modes'])})")
    try:
        spread = entry["per_iteration"]
        iterations = iteration_count(entry.get("iterations"), report.get("settings", {}).get("K"))
        figures = {name: float(spread[name]["total"]) / iterations
                   for name in ("pool_scores", "computed_tokens", "prompt_tokens", "requests", "seconds")}
        figures["overhead_seconds"] = max(0.0, float(entry["wall_seconds"]) - float(entry["engine_seconds"])) / iterations
        figures["engine_rate"] = (float(entry["engine_computed_tokens"]) / float(entry["engine_seconds"])
                                  if float(entry["engine_seconds"]) > 0 else None)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise UserError(f"{path}: regimes.steady.modes.{mode} lacks per_iteration totals, iterations, wall_seconds or "
                        "engine_seconds: give a report of this version's benchmark_icm.py") from None
    return figures


def iteration_count(iterations: Any, fallback: Any) -> int:
    """The report's iteration count (the mode's own, else settings.K); ValueError when neither is a positive int."""
    value = iterations if isinstance(iterations, int) and iterations > 0 else fallback
    if not isinstance(value, int) or value <= 0:
        raise ValueError("no iteration count")
    return value


def calibrated_rate(path: Path, pattern: str, allow_zero: bool = False) -> PoolScoreRate:
    """Pool scores per iteration and client overhead per iteration measured by a steady-state benchmark (the
    mode ``pattern`` of regimes.steady). UserError when it computed no pool score after the first scoring,
    unless ``allow_zero`` (a validation, which compares like with like)."""
    report = read_benchmark(path)
    measured = measured_iteration(report, pattern, path)
    settings = report.get("settings", {})
    if measured["pool_scores"] == 0 and not allow_zero:
        raise UserError(
            f"{path}: {pattern} computed no pool score in its {settings.get('K')} steady-state iterations: no prediction "
            "disagreed with its claim's label (the labelling is a fixed point of the model's predictions, which no later "
            "iteration leaves), so it measures no cost per iteration for a run that still moves. Calibrate with a "
            "benchmark that proposed flips (another --seed or --pool), or give --pool-scores-per-iteration")
    return PoolScoreRate(measured["pool_scores"], measured["overhead_seconds"], assumed=False, source=(
        f"measured in {path} ({pattern}, steady state, {settings.get('testbed')} pool {settings.get('pool')}, "
        f"K={settings.get('K')}): {measured['pool_scores']:.3g} pool scores and "
        f"{measured['overhead_seconds']:.3g} s of client time per iteration"))


@dataclass(frozen=True)
class Throughput:
    """How fast the engine computes: ``prefill_rate`` engine-computed prompt tokens per second, plus
    ``request_latency`` seconds per request (HTTP, scheduling, the one generated token). On the hosted route the
    rate limits bound it instead (requests and prompt tokens per minute)."""
    prefill_rate: Optional[float] = None
    request_latency: float = 0.0
    requests_per_minute: Optional[float] = None
    tokens_per_minute: Optional[float] = None
    source: str = "none given"


@dataclass(frozen=True)
class Job:
    """The whole job: ``batches`` pools of ``pool_size`` claims, each searched by ``seeds`` runs of ``K``
    iterations."""
    pool_size: int
    batches: int
    seeds: int
    K: int

    @property
    def iterations(self) -> int:
        return self.K * self.batches * self.seeds

    @property
    def runs(self) -> int:
        return self.batches * self.seeds


FIGURES = ("requests", "prompts", "prompt_tokens", "computed_tokens", "output_tokens", "hours", "dollars")


def per_iteration(cost: PoolScoreCost, rate: PoolScoreRate, route: str) -> dict[str, Optional[float]]:
    """One iteration's counts: each pool score's count × pool scores per iteration. On the hosted route every
    prompt is a request of its own and the engine's computed tokens are the provider's (unknown: None).
    Output tokens: max_tokens (1) per prompt."""
    scores = rate.pool_scores_per_iteration
    prompts = cost.prompts * scores
    requests = prompts if route == "external" else cost.requests * scores
    return {"pool_scores": scores, "requests": requests, "prompts": prompts, "prompt_tokens": cost.prompt_tokens * scores,
            "computed_tokens": None if route == "external" else cost.computed_tokens * scores,
            "output_tokens": prompts * MAX_TOKENS}


def seconds_per_iteration(counts: dict[str, Optional[float]], rate: PoolScoreRate, throughput: Throughput,
                          route: str) -> tuple[Optional[float], str]:
    """Wall seconds of one iteration and the formula used, or (None, why not).

    Self-hosted: computed tokens / prefill rate + requests × request latency + client overhead.
    Hosted: the rate limits' floor, max(prompt tokens / tokens per minute, requests / requests per minute) × 60,
    + client overhead (the provider's own speed is not known, so this is a lower bound)."""
    if route == "external":
        waits = [counts[key] / limit * 60 for key, limit in (("prompt_tokens", throughput.tokens_per_minute),
                                                              ("requests", throughput.requests_per_minute)) if limit]
        if not waits:
            return None, ("no rate limit known: set API_TOKENS_PER_MINUTE and API_REQUESTS_PER_MINUTE (or --tokens-per-minute, "
                          "--requests-per-minute) for the hosted route's time")
        return max(waits) + rate.overhead_seconds_per_iteration, (
            "hosted: the rate limits' floor, max(prompt tokens / tokens per minute, requests / requests per minute), "
            "a lower bound (the provider's own speed is unknown)")
    if throughput.prefill_rate is None:
        return None, "no prefill rate: pass --prefill-rate TOKENS_PER_S or --probe URL"
    computed = counts["computed_tokens"] or 0.0
    return (computed / throughput.prefill_rate + counts["requests"] * throughput.request_latency
            + rate.overhead_seconds_per_iteration), (
        "engine-computed tokens / prefill rate + requests × latency per request + client overhead")


def dollars_of(totals: dict[str, Optional[float]], route: str, prices: tuple[Optional[float], Optional[float]],
               gpu_hour_price: Optional[float]) -> tuple[Optional[float], str]:
    """Dollars and how they were found. Hosted: prompt tokens × input price / 1e6 + output tokens × output price
    / 1e6 (list price, as src/pipeline/scoring_cost.py prices a run). Self-hosted: hours × --gpu-hour-price."""
    if route == "external":
        missing = [name for name, value in zip((INPUT_PRICE_SETTING, OUTPUT_PRICE_SETTING), prices) if value is None]
        if missing:
            return None, f"no price: set {' and '.join(missing)} (SECRETS or the environment), dollars per million tokens"
        how = (f"prompt tokens × {prices[0]:g} + output tokens × {prices[1]:g} dollars per million, list price "
               "(no discount for tokens the provider caches)")
        return (totals["prompt_tokens"] * prices[0] + totals["output_tokens"] * prices[1]) / TOKENS_PER_PRICE_UNIT, how
    if gpu_hour_price is None:
        return None, "self-hosted: pass --gpu-hour-price DOLLARS (the server's price per hour) for dollars"
    if totals["hours"] is None:
        return None, "no hours to price: pass --prefill-rate or --probe"
    return totals["hours"] * gpu_hour_price, f"hours × --gpu-hour-price {gpu_hour_price:g} dollars per server-hour"


def project(cost: PoolScoreCost, rate: PoolScoreRate, throughput: Throughput, job: Job, route: str,
            prices: tuple[Optional[float], Optional[float]] = (None, None),
            gpu_hour_price: Optional[float] = None) -> dict[str, Any]:
    """The projection: per pool score, per iteration, per run (K iterations of one pool), per claim (a run /
    its pool size) and the whole job (K × batches × seeds iterations), each with requests, prompts,
    prompt_tokens, computed_tokens, output_tokens, hours and dollars (None where unknown), and ``notes`` saying
    how hours and dollars were found."""
    iteration = per_iteration(cost, rate, route)
    seconds, time_note = seconds_per_iteration(iteration, rate, throughput, route)
    iteration["hours"] = None if seconds is None else seconds / SECONDS_PER_HOUR

    def scaled(times: float) -> dict[str, Optional[float]]:
        return {k: (None if v is None else v * times) for k, v in iteration.items() if k != "pool_scores"}

    per_run, job_total = scaled(job.K), scaled(job.iterations)
    job_dollars, dollars_note = dollars_of(job_total, route, prices, gpu_hour_price)
    for block, share in ((per_run, job.K / job.iterations), (job_total, 1.0)):
        block["dollars"] = None if job_dollars is None else job_dollars * share
    iteration["dollars"] = None if job_dollars is None else job_dollars / job.iterations
    per_claim = {k: (None if v is None else v / job.pool_size) for k, v in per_run.items()}
    score = {"requests": cost.requests if route != "external" else cost.prompts, "prompts": cost.prompts,
             "prompt_tokens": cost.prompt_tokens, "computed_tokens": None if route == "external" else cost.computed_tokens}
    return {"per_pool_score": score, "per_iteration": iteration, "per_run": per_run, "per_claim": per_claim,
            "job": job_total, "notes": {"hours": time_note, "dollars": dollars_note}}


def relative_error(projected: Optional[float], measured: Optional[float]) -> Optional[float]:
    """(projected - measured) / measured; None when either is unknown or the measurement is 0."""
    if projected is None or measured is None or measured == 0:
        return None
    return (projected - measured) / measured


def as_json(value: Any) -> Any:
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value
