"""The scorer returns scores; the search owns the metric, the energy and the consistency rules (issue 22, item 2)."""
import ast
import inspect
import random

import pytest

from src.config.run_config import PromptConfig
from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records, sample_pool
from src.pipeline.pool_scoring import PoolScorer
from src.search.annealing import ICMSearch, SearchSettings, SearchState, seed_claims
from tests.conftest import REPO_ROOT

# Scores the synthetic model gave this pool (seed 7): the pool is fixed, so the metric is too.
SCORES = {0: 0.7377599321892157, 1: -0.7231449488042394, 2: -0.3698892843531104, 3: 0.8913367100079872,
          4: 0.7105919042496, 5: -0.04768038741634195, 6: 1.1345555238252092, 7: 0.12990901267370458,
          8: -1.843512398028951, 9: -0.11628403946385413, 10: -0.4246852353471532, 11: -0.4589721896802591}
# What PoolScorer.evaluate returned for that scored pool before the metric moved to the search (commit 2c36f2a).
METRIC_BEFORE = {"mean": {"train_accuracy": 0.5, "train_prob": 0.097571632488429, "inconsistent_num": 6, "train_size": 12,
                          "train_predict_distribution": {"1": 6, "0": 6}},
                 "sum": {"train_accuracy": 0.5, "train_prob": 1.170859589861148, "inconsistent_num": 6, "train_size": 12,
                         "train_predict_distribution": {"1": 6, "0": 6}}}


class FixedScores:
    """A scorer that only knows the pool's scores, and counts how often it is asked."""

    def __init__(self, scores):
        self.scores, self.asked = scores, 0

    def pool_scores(self, claims):
        self.asked += 1
        return {uid: self.scores[uid] for uid in claims if claims[uid].label is not None}

    def predict_score(self, example, claims):
        raise AssertionError("not asked here")


def scored_pool():
    records = normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)
    rng = random.Random(7)
    pool = sample_pool(records, TESTBED_SPECS["demo"], 16, rng, "demo")
    return seed_claims(pool, 12, rng), rng


def pipeline_imports() -> set[str]:
    imported = set()
    for path in (REPO_ROOT / "src" / "pipeline").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    return imported


def test_the_scoring_path_imports_nothing_from_the_search():
    assert pipeline_imports(), "no imports found: the test reads the wrong folder"
    assert not {m for m in pipeline_imports() if m == "src.search" or m.startswith("src.search.")}


def test_the_scorer_has_no_metric():
    assert not hasattr(PoolScorer, "evaluate")
    assert "mp_reduce" not in inspect.signature(PoolScorer).parameters


@pytest.mark.parametrize("mp_reduce", ["mean", "sum"])
def test_the_search_computes_the_metric_it_computed_before_from_the_scores_alone(mp_reduce):
    claims, rng = scored_pool()
    scorer = FixedScores(SCORES)
    search = ICMSearch(scorer, SearchSettings(mp_reduce=mp_reduce), rng, SearchState(claims))
    assert search.metric(claims) == METRIC_BEFORE[mp_reduce]
    assert scorer.asked == 1


def test_reference_draws_shuffle_the_counted_pairs_with_the_search_rng():
    claims, _ = scored_pool()
    draws = {}
    for rng_draws in ("reference", "minimal"):
        rng = random.Random(0)
        metric = ICMSearch(FixedScores(SCORES), SearchSettings(rng_draws=rng_draws), rng, SearchState(claims)).evaluate(claims)
        assert metric == METRIC_BEFORE["mean"]
        draws[rng_draws] = rng.random()
    untouched = random.Random(0).random()
    assert draws["minimal"] == untouched != draws["reference"]


def test_the_pool_scores_are_what_the_synthetic_model_gives():
    # Pins SCORES to the model they came from, so the metric above is of a real scored pool.
    from core.llm_api.llm import ModelAPI
    from core.llm_api.settings import Settings
    from src.benchmarks.synthetic_model import SyntheticModel

    records = normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)
    pool = sample_pool(records, TESTBED_SPECS["demo"], 16, random.Random(7), "demo")
    claims, _ = scored_pool()
    model = SyntheticModel(pool, [r["label"] for r in pool], seed=7, prior_weight=0.3, prior_noise=1.0)
    assert PoolScorer(ModelAPI(settings=Settings(), route=model), PromptConfig(prompt_layout="reference")).pool_scores(claims) == SCORES

