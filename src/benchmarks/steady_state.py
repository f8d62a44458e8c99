"""The steady state's cost per iteration, predicted without a model: the real search on a stand-in engine.

The search code itself (ICMSearch with PoolScorer, or the reference's request pattern) runs on a pool that starts
fully labelled, as benchmark_icm.py --regime steady does. The stand-in engine answers each prompt with a fixed
random draw per judged claim and labelled set (a model at chance, whose answers move with any label, as
SmolLM2-135M's nearly do, but not with the order, so all patterns take one search path) or as the planted
synthetic model, and counts the prompt tokens it would compute through the model of vLLM's
prefix cache in block_cache.py. So the number of pool scores per iteration comes from the search's own control
flow (proposals, repairs, memo hits, the reference's repeats), and the tokens per pool score from the layout and
the cache. What it assumes: the search path is the stand-in's, not the real model's (how often a flip is proposed
and repaired differs with the model), and prompts run one after another (the best case for prompts within one
request). A block size of 1 with a small capacity is a rough
stand-in for llama.cpp's single slot and RAM prompt cache.

Three patterns separate the saving (``saving_shares``): the reference pattern against ours in the reference
layout is memoisation and batching (the same prompts, fewer of them); ours in the reference layout against ours
in the tree layout is the tree (the same pool scores, other prompts).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.benchmarks.block_cache import BLOCK_SIZE, BlockPrefixCache
from src.benchmarks.iteration_costs import CostCounters, iteration_costs, per_iteration
from src.benchmarks.reference_pattern import ReferencePatternScorer, ReferencePatternSearch
from src.benchmarks.synthetic_model import SyntheticModel
from src.config.run_config import PromptConfig
from src.pipeline.pool_scoring import PoolScorer
from src.prompts.prompts import DEMO_SEPARATOR
from src.search.annealing import ICMSearch, SearchSettings, SearchState, seed_claims

# A tokenizer of prompt pieces: for each text, its token ids.
Tokenize = Callable[[Sequence[str]], list[list[int]]]
# (mode, layout) of the patterns the saving is split by, in the order they are compared.
PATTERNS = {"reference pattern": ("reference", "reference"), "ours, reference layout": ("ours", "reference"),
            "ours, tree layout": ("ours", "tree"), "ours, tree-volatility layout": ("ours", "tree-volatility")}


class BlockTokens:
    """A prompt's tokens as the sum of its pieces' tokens: each demonstration (with its separator) and the query,
    each tokenized once.

    BPE merges the separator differently at the end of a text ("\\n\\n" is one token) than before the next
    demonstration, so the separator is tokenized in context, once, and appended to each demonstration.
    """

    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize
        self._known: dict[str, list[int]] = {}
        self._separator: Optional[list[int]] = None

    def _pieces(self, texts: list[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self._known]
        if missing:
            self._known.update(zip(missing, self.tokenize(missing)))

    def separator(self, sample: str) -> list[int]:
        if self._separator is None:
            joined, alone = self.tokenize([DEMO_SEPARATOR + sample, sample])
            self._separator = joined[:len(joined) - len(alone)]
        return self._separator

    def prompt(self, blocks: Sequence[str]) -> list[int]:
        """``blocks``: the demonstrations without their separator, then the query."""
        *demos, query = blocks
        self._pieces(list(blocks))
        tokens: list[int] = []
        for demo in demos:
            tokens += self._known[demo] + self.separator(query)
        return tokens + self._known[query]


class CachedEngineModel(SyntheticModel):
    """The synthetic model's answers, with an engine's token counts from the block prefix-cache model."""

    name = "cache-model"

    def __init__(self, claims: Sequence[Any], planted: Sequence[int], tokens: BlockTokens, cache: BlockPrefixCache,
                 seed: int = 0, answers: str = "at-chance") -> None:
        super().__init__(claims, planted, seed=seed)
        self.answers = answers
        self.seed = seed
        self.tokens = tokens
        self.cache = cache
        self.one_prompt_per_request = False

    def send_prompts_singly(self) -> None:
        self.one_prompt_per_request = True

    def logodds(self, prompt: str) -> float:
        if self.answers == "planted":
            return super().logodds(prompt)
        # A fixed draw per judged claim and set of labelled demonstrations: any other label gives another score, while
        # the order doesn't matter, so every layout and pattern follows the same search path.
        *demos, query = self._blocks(prompt)
        key = "\0".join([str(self.seed), query, *sorted(demos)])
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "big")).gauss(0.0, 1.0)

    def prompt_tokens(self, prompt: str) -> list[int]:
        return self.tokens.prompt(self._blocks(prompt))

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.prompt_tokens(t) for t in texts]

    def next_token_logprobs(self, prompts: Sequence[str]):
        for prompt in prompts:
            tokens = self.prompt_tokens(prompt)
            hits = self.cache.run(tokens)
            self.stats.prompt_tokens += len(tokens)
            self.stats.computed_tokens += len(tokens) - hits
        answers = super().next_token_logprobs(prompts)
        if self.one_prompt_per_request:
            self.stats.requests += len(prompts) - 1  # the base counted one
        return answers


@dataclass(frozen=True)
class SteadyStatePrediction:
    """What one pattern costs per iteration in the steady state, on the cache model.

    ``per_iteration``: for computed_tokens, prompt_tokens, requests and pool_scores, their spread over the
    iterations after the first scoring (iteration_costs.Spread as a dict: median, p25, p75, min, max, total).
    Tokens are prompt tokens; seconds are not modelled (the stand-in takes no time that means anything).
    """
    pool_size: int
    mode: str  # "ours" or "reference" (the reference code's request pattern)
    layout: str
    cache_capacity: int  # tokens
    block_size: int
    iterations: int
    first_scoring_computed_tokens: int
    hit_rate: float  # cached prompt tokens / prompt tokens over the whole run
    per_iteration: dict[str, dict[str, float]]

    @property
    def computed_tokens_per_iteration(self) -> float:
        """The mean engine-computed tokens of an iteration (iterations that propose no flip cost ours nothing, so
        the median of a short run can be 0)."""
        return self.per_iteration["computed_tokens"]["total"] / self.iterations

    @property
    def computed_tokens_per_pool_score(self) -> Optional[float]:
        """Engine-computed tokens per pool score computed after the first scoring (what the layout and the cache
        decide; multiply by a measured rate of pool scores per iteration to use another model's search path).
        None when no pool score was computed. For the reference pattern it includes its predictions and queries."""
        scores = self.per_iteration["pool_scores"]["total"]
        return self.per_iteration["computed_tokens"]["total"] / scores if scores else None


def predicted_steady_state(pool: Sequence[dict], layout: str, tokens: BlockTokens, cache_capacity: int,
                           block_size: int = BLOCK_SIZE, mode: str = "ours", K: int = 8,
                           rng: Optional[random.Random] = None, model_seed: int = 0,
                           answers: str = "at-chance") -> SteadyStatePrediction:
    """Run K iterations of the search from a fully labelled ``pool`` (testbed records, as sample_pool draws them;
    each record's gold "label" is the synthetic model's planted label) and predict the engine's cost.

    ``rng``: the search's RNG, which first draws the random starting labels as seed_claims does (the benchmark's
    --seed: pass the Random that drew the pool). ``answers``: "at-chance" (default) scores each prompt with a
    fixed random draw per judged claim and set of labelled demonstrations, a model at chance whose answers move
    with every label, as SmolLM2-135M's nearly do, so flips keep being proposed; it ignores the order, so every
    pattern follows the same search path. "planted": the synthetic model (its labels settle after the first
    repair, so few flips are proposed). Raises ValueError for an unknown mode or layout, or a prompt
    longer than ``cache_capacity``.
    """
    if mode not in ("ours", "reference"):
        raise ValueError(f"unknown mode {mode!r}: use ours or reference")
    rng = rng or random.Random(0)
    claims = seed_claims(list(pool), len(pool), rng)
    model = CachedEngineModel(list(pool), [int(bool(r["label"])) for r in pool], tokens,
                              BlockPrefixCache(cache_capacity, block_size), seed=model_seed, answers=answers)
    api = ModelAPI(settings=Settings(), route=model, show_progress=False)
    if mode == "reference":
        scorer: Any = ReferencePatternScorer(api, PromptConfig())
        search: ICMSearch = ReferencePatternSearch(scorer, SearchSettings(K=K), rng, SearchState(claims))
    else:
        scorer = PoolScorer(api, PromptConfig(prompt_layout=layout))  # type: ignore[arg-type]
        search = ICMSearch(scorer, SearchSettings(K=K), rng, SearchState(claims))

    def read() -> CostCounters:
        stats = model.stats
        return CostCounters(requests=stats.requests, computed_tokens=stats.computed_tokens,
                            prompt_tokens=stats.prompt_tokens, pool_scores=scorer.pool_scores_computed)

    search.initialise()
    readings = [read()]
    search.run(lambda record: readings.append(read()))
    costs = iteration_costs(readings)
    return SteadyStatePrediction(
        pool_size=len(pool), mode=mode, layout=scorer.prompt_layout, cache_capacity=cache_capacity, block_size=block_size,
        iterations=len(costs), first_scoring_computed_tokens=readings[0].computed_tokens,
        hit_rate=model.cache.counters.hit_rate,
        per_iteration={k: v for k, v in per_iteration(costs).items() if k != "seconds"},
    )


def saving_shares(predictions: dict[str, SteadyStatePrediction]) -> dict[str, Optional[float]]:
    """The steady-state saving split into its parts, as ratios of mean computed tokens per iteration
    (keys of PATTERNS): memoisation = reference pattern / ours in the reference layout; tree = ours in the
    reference layout / ours in the tree layout; total = reference pattern / ours in the tree layout (their
    product); volatility = ours in the tree layout / ours in the tree-volatility layout. A ratio whose parts were
    not predicted, or whose denominator is 0, is None."""
    def ratio(over: str, under: str) -> Optional[float]:
        if over not in predictions or under not in predictions:
            return None
        below = predictions[under].computed_tokens_per_iteration
        return predictions[over].computed_tokens_per_iteration / below if below else None

    return {"memoisation": ratio("reference pattern", "ours, reference layout"),
            "tree": ratio("ours, reference layout", "ours, tree layout"),
            "total": ratio("reference pattern", "ours, tree layout"),
            "volatility": ratio("ours, tree layout", "ours, tree-volatility layout")}
