"""What scoring cost: requests, prompt tokens sent, engine-computed prompt tokens, output tokens, wall time and,
on the hosted API, dollars; in total and per labelled claim (summary.json) or per test claim (eval.json).

The counts come from the route's RouteStats (core/llm_api/base_llm.py). Answers served by the response cache
never reach the route, so they cost nothing here, as they cost nothing at the provider.

Dollars are priced only on the hosted route, at API_PRICE_INPUT_PER_MTOK and API_PRICE_OUTPUT_PER_MTOK (dollars
per million tokens; core/llm_api/settings.py), with no default: unset, dollars are null and the block says which
setting to set. On the vLLM and embedded routes the cost is GPU (or CPU) time, which ``wall_seconds`` gives, so
dollars stay null there whatever the price settings say.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from core.llm_api.base_llm import RouteStats
from core.llm_api.completions_request import MAX_TOKENS
from core.llm_api.settings import Settings

HOSTED_ROUTE = "external"
INPUT_PRICE_SETTING, OUTPUT_PRICE_SETTING = "API_PRICE_INPUT_PER_MTOK", "API_PRICE_OUTPUT_PER_MTOK"
TOKENS_PER_PRICE_UNIT = 1_000_000
# The counts given per labelled (or test) claim; the rest are totals only.
PER_CLAIM = ("requests", "prompt_tokens", "computed_prompt_tokens", "output_tokens", "wall_seconds")
# The scorer's counts CostCounts carries beside the route's (summary.json's top-level fields of the same names).
SCORER_COUNTS = ("pool_scores_computed", "pool_scores_reused", "single_predictions_computed",
                 "batch_predictions_computed")


@dataclass(frozen=True)
class CostCounts:
    """Counts of one invocation, or totals over several. Tokens are whole tokens, seconds wall-clock; the
    ``hosted_*`` counts are the part sent to the hosted API (the only part a price applies to)."""

    requests: int = 0
    prompts_scored: int = 0
    prompt_tokens: int = 0  # prompt tokens the engine (or provider) was given
    computed_prompt_tokens: int = 0  # the part it computed, not served from its prefix cache
    output_tokens: int = 0  # generated tokens: the provider's usage where it gives them, else max_tokens per prompt
    output_tokens_assumed: int = 0  # answers whose output count is max_tokens, not a count the server gave
    prompt_tokens_estimated: int = 0  # hosted answers whose prompt count is estimated from the prompt's length
    hosted_requests: int = 0
    hosted_prompt_tokens: int = 0
    hosted_output_tokens: int = 0
    wall_seconds: float = 0.0
    invocations: int = 0  # ICM.py processes that ran the run (1, plus one per resume)
    # The scorer's counts (src/pipeline/pool_scoring.PoolScorer): pool scores are the labellers' cost unit.
    pool_scores_computed: int = 0
    pool_scores_reused: int = 0
    single_predictions_computed: int = 0
    batch_predictions_computed: int = 0

    @classmethod
    def from_route(cls, stats: RouteStats, route: str, wall_seconds: float,
                   scorer: Optional[Any] = None) -> "CostCounts":
        """One invocation's counts from its route's stats (refreshed by the caller) and, if given, its scorer's
        SCORER_COUNTS (a PoolScorer). Routes that don't read the answers' usage (vLLM, embedded) generate
        max_tokens per prompt, which is what they are asked for."""
        hosted = route == HOSTED_ROUTE
        scored = {name: getattr(scorer, name) for name in SCORER_COUNTS} if scorer is not None else {}
        output, assumed = ((stats.completion_tokens, stats.completion_tokens_assumed) if hosted
                           else (stats.prompts * MAX_TOKENS, stats.prompts))
        return cls(requests=stats.requests, prompts_scored=stats.prompts, prompt_tokens=stats.prompt_tokens,
                   computed_prompt_tokens=stats.computed_tokens, output_tokens=output, output_tokens_assumed=assumed,
                   prompt_tokens_estimated=stats.prompt_tokens_estimated if hosted else 0,
                   hosted_requests=stats.requests if hosted else 0, hosted_prompt_tokens=stats.prompt_tokens if hosted else 0,
                   hosted_output_tokens=output if hosted else 0, wall_seconds=wall_seconds, invocations=1, **scored)

    def __add__(self, other: "CostCounts") -> "CostCounts":
        return CostCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "wall_seconds": round(self.wall_seconds, 2)}

    @classmethod
    def from_json(cls, saved: Any) -> Optional["CostCounts"]:
        """The counts ``to_json`` wrote, or None when ``saved`` is not such a record (absent, or damaged: these
        are statistics, never a reason to refuse a resume). A record written before the scorer's counts were
        kept lacks SCORER_COUNTS: they read as 0, so the run's totals count them from the next invocation on."""
        if not isinstance(saved, dict):
            return None
        values = {}
        for f in fields(cls):
            value = saved.get(f.name, 0 if f.name in SCORER_COUNTS else None)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or value < 0 or value != value or value == float("inf") or (f.type == "int" and not isinstance(value, int)):
                return None
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True)
class Prices:
    """The hosted API's price in dollars per million tokens; None where the setting is unset."""

    input_per_mtok: Optional[float] = None
    output_per_mtok: Optional[float] = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "Prices":
        return cls(settings.api_price_input_per_mtok, settings.api_price_output_per_mtok)

    def missing(self) -> list[str]:
        return [name for name, value in ((INPUT_PRICE_SETTING, self.input_per_mtok),
                                         (OUTPUT_PRICE_SETTING, self.output_per_mtok)) if value is None]


def dollars(total: CostCounts, prices: Prices, route: str) -> tuple[Optional[float], Optional[str]]:
    """The dollars ``total`` cost on the hosted API, and a note on how they were found or why there are none.
    Dollars = hosted prompt tokens × input price / 1e6 + hosted output tokens × output price / 1e6."""
    if total.hosted_requests == 0 and route != HOSTED_ROUTE:
        return None, (f"the {route} route is not a priced API: its cost is the GPU or CPU time it ran (wall_seconds). "
                      f"{INPUT_PRICE_SETTING} and {OUTPUT_PRICE_SETTING} price the hosted API only")
    missing = prices.missing()
    if missing:
        return None, (f"no price set: set {' and '.join(missing)} (SECRETS or the environment) to your provider's "
                      "dollars per million tokens")
    amount = (total.hosted_prompt_tokens * prices.input_per_mtok
              + total.hosted_output_tokens * prices.output_per_mtok) / TOKENS_PER_PRICE_UNIT
    note = (f"hosted prompt and output tokens at {INPUT_PRICE_SETTING}={prices.input_per_mtok:g} and "
            f"{OUTPUT_PRICE_SETTING}={prices.output_per_mtok:g} dollars per million, with no discount for prompt "
            "tokens the provider cached")
    if total.hosted_requests < total.requests:
        note += "; the requests sent to a self-hosted route are not priced"
    if total.prompt_tokens_estimated:
        note += (f"; {total.prompt_tokens_estimated} answers gave no usage.prompt_tokens, so their prompt tokens are "
                 "estimated at 4 characters per token")
    return amount, note


def _output_tokens_from(total: CostCounts) -> str:
    if total.prompts_scored == 0:
        return "no prompt reached the model (every answer came from the response cache)"
    if total.output_tokens_assumed == 0:
        return "usage: the completion tokens the server reported"
    if total.output_tokens == total.output_tokens_assumed * MAX_TOKENS:
        return f"max_tokens: {MAX_TOKENS} per prompt scored (no usage count read from the answers)"
    return (f"usage where the answer gave it, else max_tokens ({MAX_TOKENS}) for the {total.output_tokens_assumed} "
            "answers without it")


def _per(value: Optional[float], count: Optional[int]) -> Optional[float]:
    return None if value is None or not count else value / count


def cost_report(total: CostCounts, *, total_key: str, unit: str, units: Optional[int], prices: Prices,
                route: str) -> dict[str, Any]:
    """The cost block: ``total_key`` (e.g. "run") holds the totals with their dollars; ``per_<unit>`` the
    totals in PER_CLAIM and dollars divided by ``units`` (None when ``units`` is 0 or unknown)."""
    amount, note = dollars(total, prices, route)
    totals = {**total.to_json(), "dollars": amount}
    per_unit = None if not units else {name: _per(totals[name], units) for name in (*PER_CLAIM, "dollars")}
    return {
        f"{unit}s": units,
        total_key: totals,
        f"per_{unit}": per_unit,
        "output_tokens_from": _output_tokens_from(total),
        "price": None if prices.missing() else {"input_per_mtok": prices.input_per_mtok, "output_per_mtok": prices.output_per_mtok},
        "dollars_note": note,
    }
