"""The pieces that make an iteration cheap, and the ones the benchmark measures with."""
import math
import random
from collections import Counter

import pytest

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.benchmarks.block_cache import BLOCK_SIZE, CPU_BLOCK_SIZE, BlockPrefixCache
from src.benchmarks.call_recorder import CallRecorder, MeasuredScorer
from src.benchmarks.prefix_trie import common_prefix_length, trie_size
from src.benchmarks.process_memory import peak_rss_mb, reset_peak_rss
from src.benchmarks.reference_pattern import DECISION_PROMPT, ReferencePatternScorer, ReferencePatternSearch
from src.prompts.prompts import (
    DEMO_SEPARATOR,
    demo_orders,
    full_demo_order,
    judge_prompt,
    leave_one_out_prompts,
    send_order,
)
from src.search.annealing import ICMSearch, SearchSettings, SearchState, seed_claims
from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records, sample_pool
from src.config.run_config import PromptConfig
from src.pipeline.pool_scoring import PoolScorer
from src.data.claims import Claim
from tests.claim_factory import claim
from src.benchmarks.synthetic_model import SyntheticModel


def grouped_pool(groups: int, per_group: int, seed: int = 0) -> list[Claim]:
    rng = random.Random(seed)
    return [
        claim(g * per_group + k, rng.randint(0, 1), group=g, text=f"Question: q{g}\nClaim: c{g}.{k}\nI think this claim is")
        for g in range(groups) for k in range(per_group)
    ]


def demo_pool(size: int, num_seed: int, seed: int):
    claims = normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)
    rng = random.Random(seed)
    pool = sample_pool(claims, TESTBED_SPECS["demo"], size, rng, "demo")
    return pool, seed_claims(pool, num_seed, rng), rng


@pytest.mark.parametrize("groups,per_group", [(8, 4), (5, 3), (1, 4), (7, 1), (3, 2)])
def test_tree_layout_gives_each_claim_exactly_the_others(groups, per_group):
    pool = grouped_pool(groups, per_group)
    for i, order in enumerate(demo_orders(pool, "tree")):
        assert sorted(order) == [j for j in range(len(pool)) if j != i]
    prompts = leave_one_out_prompts(pool, "space-in-label", "tree")
    for judged, prompt in zip(pool, prompts):
        blocks = prompt.split(DEMO_SEPARATOR)
        assert blocks[-1] == judged.text
        assert Counter(b.rsplit(" ", 1)[0] for b in blocks[:-1]) == Counter(c.text for c in pool if c is not judged)


def test_tree_layout_splits_at_group_boundaries_first():
    pool = grouped_pool(4, 4)
    orders = demo_orders(pool, "tree")
    # Claims of groups 0-1 start with all of groups 2-3, and the other way round.
    for i in range(8):
        assert orders[i][:8] == list(range(8, 16))
    for i in range(8, 16):
        assert orders[i][:8] == list(range(8))


def test_tree_layout_shrinks_the_trie_to_about_n_log_n():
    pool = grouped_pool(64, 4)
    n = len(pool)

    def trie_in_demos(layout):
        return trie_size([order + [-1 - i] for i, order in enumerate(demo_orders(pool, layout))])

    reference, tree = trie_in_demos("reference"), trie_in_demos("tree")
    # Prompt i leaves the shared chain after claim i-1 and adds its N-i remaining demos and its query.
    assert reference == n * (n + 1) // 2 + n - 1
    assert tree <= n * math.log2(n) + 2 * n
    assert tree < reference / 10


@pytest.mark.parametrize("layout", ["reference", "tree"])
def test_send_order_walks_the_trie_so_each_prompt_reuses_the_one_before(layout):
    pool = grouped_pool(6, 4, seed=3)
    orders = demo_orders(pool, layout)
    sequences = [orders[i] + [-1 - i] for i in send_order(orders)]
    fresh = len(sequences[0]) + sum(len(b) - common_prefix_length(a, b) for a, b in zip(sequences, sequences[1:]))
    assert fresh == trie_size(sequences)
    assert sorted(send_order(orders)) == list(range(len(pool)))


def test_reference_layout_is_paper_mode():
    pool = grouped_pool(3, 4)
    assert send_order(demo_orders(pool, "reference")) == list(range(len(pool)))
    assert full_demo_order(demo_orders(pool, "reference")) == list(range(len(pool)))
    prompts = leave_one_out_prompts(pool, "space-in-label", "reference")
    assert prompts == [judge_prompt(c, [d for d in pool if d is not c], "space-in-label") for c in pool]


def test_full_order_extends_the_last_prompt_sent():
    pool = grouped_pool(5, 2)
    last = send_order(demo_orders(pool, "tree"))[-1]
    assert full_demo_order(demo_orders(pool, "tree")) == demo_orders(pool, "tree")[last] + [last]


def test_tree_scores_land_on_the_right_claims():
    # The planted model's vote ignores demonstration order, so both layouts must give the same scores.
    pool, claims, _ = demo_pool(16, 16, seed=4)
    scores = {}
    for layout in ("reference", "tree"):
        model = SyntheticModel(pool, [c["label"] for c in pool], seed=4)
        scorer = PoolScorer(ModelAPI(settings=Settings(), route=model), PromptConfig(prompt_layout=layout))
        scores[layout] = scorer.pool_scores(claims)
        assert model.batch_sizes == [16]
    assert scores["reference"].keys() == scores["tree"].keys()
    for uid in scores["reference"]:
        assert scores["tree"][uid] == pytest.approx(scores["reference"][uid], abs=1e-12)


class PromptLog(SyntheticModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[list[str]] = []
        self.one_prompt_per_request = False

    def send_prompts_singly(self) -> None:
        self.one_prompt_per_request = True

    def next_token_logprobs(self, prompts):
        if self.one_prompt_per_request and len(prompts) > 1:
            return [self.next_token_logprobs([p])[0] for p in prompts]
        self.sent.append(list(prompts))
        return super().next_token_logprobs(prompts)


def test_pool_prompts_reach_the_engine_in_trie_order():
    pool, claims, _ = demo_pool(12, 12, seed=2)
    model = PromptLog(pool, [c["label"] for c in pool])
    PoolScorer(ModelAPI(settings=Settings(), route=model), PromptConfig(prompt_layout="tree")).pool_scores(claims)
    labeled = [claims[uid] for uid in sorted(claims)]
    prompts = leave_one_out_prompts(labeled, "space-in-label", "tree")
    assert model.sent == [[prompts[i] for i in send_order(demo_orders(labeled, "tree"))]]


def test_reference_pattern_sends_a_request_per_prompt_and_a_decision_query_per_pair():
    pool, claims, rng = demo_pool(16, 8, seed=1)
    model = PromptLog(pool, [c["label"] for c in pool])
    api = ModelAPI(settings=Settings(), route=model)
    recorder = CallRecorder(api)
    scorer = MeasuredScorer(ReferencePatternScorer(recorder, PromptConfig()), recorder)
    search = ReferencePatternSearch(scorer, SearchSettings(K=15), rng, SearchState(claims))
    search.run()
    assert all(len(batch) == 1 for batch in model.sent)
    pool_groups = recorder.groups_of("pool")
    assert pool_groups and all(g.requests == len(g.prompts) >= 8 for g in pool_groups)
    decisions = recorder.groups_of("decision")
    assert decisions and all(g.prompts == [DECISION_PROMPT] for g in decisions)
    assert scorer.decision_queries == len(decisions)
    # Nothing is reused: every prediction is a request, labeled claim or not.
    assert len(recorder.groups_of("predict")) == 15
    assert scorer.pool_scores_reused == 0


def test_reference_pattern_scores_equal_ours_on_the_reference_layout():
    pool, claims, _ = demo_pool(12, 12, seed=6)
    planted = [c["label"] for c in pool]
    ours = PoolScorer(ModelAPI(settings=Settings(), route=SyntheticModel(pool, planted)), PromptConfig(prompt_layout="reference")).pool_scores(claims)
    theirs = ReferencePatternScorer(ModelAPI(settings=Settings(), route=PromptLog(pool, planted)), PromptConfig()).pool_scores(claims)
    assert ours == theirs and set(ours) == set(claims)


def test_recorder_drops_phases_answered_from_the_memo():
    pool, claims, _ = demo_pool(8, 8, seed=0)
    model = SyntheticModel(pool, [c["label"] for c in pool])
    recorder = CallRecorder(ModelAPI(settings=Settings(), route=model))
    scorer = MeasuredScorer(PoolScorer(recorder, PromptConfig(prompt_layout="reference")), recorder)
    scorer.pool_scores(claims)
    scorer.pool_scores(claims)
    scorer.predict_score(claims[0], claims)  # labeled: read from the pool score
    assert [(g.phase, g.requests, len(g.prompts)) for g in recorder.groups] == [("pool", 1, 8)]


def test_trie_size_counts_shared_prefixes_once():
    assert trie_size([]) == 0
    assert trie_size([[1, 2, 3]]) == 3
    assert trie_size([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]]) == 5
    assert trie_size([[1], [1, 2]]) == 2


def test_block_cache_reuses_whole_blocks_of_a_matching_prefix():
    cache = BlockPrefixCache(capacity_tokens=100 * BLOCK_SIZE)
    first = list(range(40))
    assert cache.run(first) == 0
    assert cache.run(first[:35] + [999] * 10) == 2 * BLOCK_SIZE  # block 3 holds token 35: recomputed
    assert cache.run(first) == 2 * BLOCK_SIZE
    assert cache.run(list(range(32))) == BLOCK_SIZE  # all cached, but the last token is always computed
    assert cache.run([7] + first[1:]) == 0  # a block is known by everything before it
    assert cache.counters.queried_tokens == 40 + 45 + 40 + 32 + 40


def test_block_cache_takes_the_cpu_block_size():
    cache = BlockPrefixCache(capacity_tokens=10 * CPU_BLOCK_SIZE, block_size=CPU_BLOCK_SIZE)
    prompt = list(range(300))  # two full 128-token blocks and a partial one
    assert cache.run(prompt) == 0
    assert cache.run(prompt[:200] + [999] * 100) == CPU_BLOCK_SIZE  # only the first full block matches
    assert cache.run(prompt) == 2 * CPU_BLOCK_SIZE


def test_block_cache_evicts_least_recently_used_and_tails_first():
    cache = BlockPrefixCache(capacity_tokens=4 * BLOCK_SIZE)
    a = [1] * (2 * BLOCK_SIZE)
    b = [2] * (2 * BLOCK_SIZE)
    c = [3] * (2 * BLOCK_SIZE)
    cache.run(a)
    cache.run(b)
    cache.run(a + [0])  # touches a: b is now the least recently used
    cache.run(c)
    assert cache.run(a + [0]) == 2 * BLOCK_SIZE
    assert cache.run(b + [0]) == 0
    with pytest.raises(ValueError, match="does not fit"):
        cache.run([4] * (5 * BLOCK_SIZE))


def test_peak_rss_can_be_reset_between_phases():
    if not reset_peak_rss():
        pytest.skip("this OS can't reset the peak RSS")
    before = peak_rss_mb()
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    grown = peak_rss_mb()
    del block
    reset_peak_rss()
    assert grown >= before + 60
    assert peak_rss_mb() < grown - 30


def test_search_calls_the_inconsistent_pairs_hook_each_repair_round():
    pool, claims, rng = demo_pool(16, 8, seed=1)
    seen = []

    class Watching(ICMSearch):
        def inconsistent_pairs(self, claims):
            pairs = super().inconsistent_pairs(claims)
            seen.append(len(pairs))
            return pairs

    scorer = PoolScorer(ModelAPI(settings=Settings(), route=SyntheticModel(pool, [c["label"] for c in pool])), PromptConfig(prompt_layout="reference"))
    Watching(scorer, SearchSettings(K=20), rng, SearchState(claims)).run()
    assert seen and any(n > 0 for n in seen)


def test_layout_over_the_whole_pool_stays_put_as_claims_get_labeled():
    frame = grouped_pool(6, 4, seed=5)
    labeled = [c for c in frame if c.uid % 3 != 0]
    grown = sorted(labeled + [frame[9]], key=lambda c: c.uid)
    before = demo_orders(labeled, "tree", frame)
    after = demo_orders(grown, "tree", frame)
    uid_of = lambda pool, order: [pool[j].uid for j in order]  # noqa: E731
    for i, judged in enumerate(labeled):
        assert sorted(uid_of(labeled, before[i])) == sorted(c.uid for c in labeled if c is not judged)
        new = uid_of(grown, after[grown.index(judged)])
        assert [u for u in new if u != 9] == uid_of(labeled, before[i])  # the new demonstration is only inserted
    # Without the frame, the tree would be re-cut for the new pool size.
    assert demo_orders(labeled, "reference", frame) == demo_orders(labeled, "reference")


# --- the tree-volatility layout (issue 24, item 5) ---

def test_volatility_layout_without_a_history_is_the_tree():
    pool = grouped_pool(6, 4, seed=1)
    tree = demo_orders(pool, "tree")
    assert demo_orders(pool, "tree-volatility") == tree
    assert demo_orders(pool, "tree-volatility", volatility={}) == tree
    assert demo_orders(pool, "tree", volatility={3: 9, 7: 2}) == tree  # the plain tree ignores a history


def test_volatility_layout_permutes_the_tree_and_puts_the_most_flipped_claims_last():
    pool = grouped_pool(4, 4)  # uids 0-15, groups of 4
    tree = demo_orders(pool, "tree")
    moved = demo_orders(pool, "tree-volatility", volatility={2: 5, 3: 1, 9: 1})
    for i in range(len(pool)):
        assert sorted(moved[i]) == sorted(tree[i])  # the same demonstrations
    # Prompts of the second half start with the first half, least volatile first: claim 2 (5 changes) last.
    for i in range(8, 16):
        assert moved[i][:8] == [0, 1, 4, 5, 6, 7, 3, 2]
    for i in range(8):
        assert moved[i][:8] == [8, 10, 11, 12, 13, 14, 15, 9]
    # All prompts of a side still share their chunk, so the trie is as small as the tree's.
    trie = lambda orders: trie_size([o + [-1 - i] for i, o in enumerate(orders)])  # noqa: E731
    assert trie(moved) == trie(tree)
    # Buckets by powers of two: 2 and 3 changes rank alike, so pool order decides between them.
    assert demo_orders(pool, "tree-volatility", volatility={2: 3, 3: 2})[8][:8] == [0, 1, 4, 5, 6, 7, 2, 3]


def test_pool_scorer_counts_label_changes_only_for_the_volatility_layout():
    pool, claims, _ = demo_pool(8, 8, seed=3)
    flipped = {**claims, 2: claims[2].relabelled(1 - claims[2].label)}
    for layout, expected in (("tree", {}), ("tree-volatility", {2: 2})):
        model = PromptLog(pool, [c["label"] for c in pool])
        scorer = PoolScorer(ModelAPI(settings=Settings(), route=model), PromptConfig(prompt_layout=layout))
        scorer.pool_scores(claims)
        scorer.pool_scores(flipped)
        scorer.pool_scores(claims)  # a memo hit still counts: the change back is seen
        scorer.pool_scores(claims)
        assert dict(scorer.label_changes) == expected
        labeled = [flipped[uid] for uid in sorted(flipped)]
        last = model.sent[-1]
        if layout == "tree":
            # Off: the prompts are the tree's, whatever happened before.
            assert last == [leave_one_out_prompts(labeled, "space-in-label", "tree")[i] for i in send_order(demo_orders(labeled, "tree"))]
            continue
        # The flipped labelling was scored once claim 2 had changed once: it goes last in each chunk it is in.
        orders = demo_orders(labeled, "tree-volatility", volatility={2: 1})
        assert orders != demo_orders(labeled, "tree")
        assert last == [leave_one_out_prompts(labeled, "space-in-label", "tree-volatility", volatility={2: 1})[i]
                        for i in send_order(orders)]


def test_a_claim_getting_its_first_label_is_no_change():
    pool, claims, _ = demo_pool(8, 4, seed=2)
    scorer = PoolScorer(ModelAPI(settings=Settings(), route=SyntheticModel(pool, [c["label"] for c in pool])),
                        PromptConfig(prompt_layout="tree-volatility"))
    scorer.pool_scores(claims)
    unlabeled = next(uid for uid, c in claims.items() if c.label is None)
    scorer.pool_scores({**claims, unlabeled: claims[unlabeled].relabelled(1)})
    assert not scorer.label_changes


# --- per-iteration statistics and the steady-state cost model (issue 24, items 1 and 2) ---

def test_iteration_costs_are_the_differences_of_the_readings_and_their_spread():
    from src.benchmarks.iteration_costs import CostCounters, Spread, iteration_costs, per_iteration
    readings = [CostCounters(requests=r, computed_tokens=t, pool_scores=p, seconds=s)
                for r, t, p, s in ((3, 100, 1, 2.0), (4, 110, 1, 2.5), (6, 140, 2, 4.0), (6, 140, 2, 4.5), (10, 240, 4, 9.0), (11, 244, 5, 9.5))]
    costs = iteration_costs(readings)
    assert [c.computed_tokens for c in costs] == [10, 30, 0, 100, 4]
    summary = per_iteration(costs)
    # Sorted 0, 4, 10, 30, 100: median 10, quartiles at positions 1 and 3 (numpy's linear rule), total 144.
    assert summary["computed_tokens"] == {"median": 10, "p25": 4, "p75": 30, "min": 0, "max": 100, "total": 144}
    assert summary["requests"]["total"] == 11 - 3 and summary["pool_scores"]["median"] == 1
    assert summary["seconds"]["total"] == pytest.approx(7.5)
    assert Spread.of([1, 2]).p25 == pytest.approx(1.25) and per_iteration([]) == {}
    with pytest.raises(ValueError):
        Spread.of([])


def char_tokens():
    from src.benchmarks.steady_state import BlockTokens
    return BlockTokens(lambda texts: [[ord(ch) for ch in text] for text in texts])


def test_cache_model_counts_a_hand_computed_case():
    from src.benchmarks.steady_state import CachedEngineModel
    pool = grouped_pool(1, 2)  # one group of two claims: each prompt is the other's demonstration, then its own query
    records = [{"prompt": c.text, "label": c.label} for c in pool]
    model = CachedEngineModel(records, [c.label for c in pool], char_tokens(), BlockPrefixCache(10_000, block_size=1))
    prompts = leave_one_out_prompts(pool, "space-in-label", "tree")
    assert model.tokenize(prompts) == [[ord(ch) for ch in p] for p in prompts]  # characters: pieces add up exactly
    model.next_token_logprobs(prompts)
    shared = common_prefix_length(prompts[0], prompts[1])  # the demonstration c0.1 against the query c0.0
    assert shared == len("Question: q0\nClaim: c0.")
    assert model.stats.computed_tokens == len(prompts[0]) + len(prompts[1]) - shared
    model.next_token_logprobs(prompts)  # all cached, but each prompt's last token is computed
    assert model.stats.computed_tokens == len(prompts[0]) + len(prompts[1]) - shared + 2
    model.send_prompts_singly()
    model.next_token_logprobs(prompts)
    assert model.stats.requests == 2 + 2 and model.stats.prompt_tokens == 3 * (len(prompts[0]) + len(prompts[1]))


def test_steady_state_prediction_is_the_trie_of_every_prompt_the_search_sent():
    from src.benchmarks import steady_state
    sent: list[str] = []

    class Logged(steady_state.CachedEngineModel):
        def next_token_logprobs(self, prompts):
            sent.extend(prompts)
            return super().next_token_logprobs(prompts)

    pool, _, _ = demo_pool(12, 0, seed=5)
    original = steady_state.CachedEngineModel
    steady_state.CachedEngineModel = Logged
    try:
        prediction = steady_state.predicted_steady_state(pool, "tree", char_tokens(), 10**7, block_size=1, K=12,
                                                         rng=random.Random(5))
    finally:
        steady_state.CachedEngineModel = original
    tokens = [[ord(ch) for ch in p] for p in sent]
    repeats = len(tokens) - len(set(map(tuple, tokens)))
    # With 1-token blocks and room for everything, the engine computes each prompt's trie once, plus the last
    # token of every prompt it has seen before.
    total = prediction.first_scoring_computed_tokens + prediction.per_iteration["computed_tokens"]["total"]
    assert total == trie_size(tokens) + repeats
    assert prediction.pool_size == 12 and prediction.iterations == 12 and prediction.layout == "tree"
    assert prediction.per_iteration["pool_scores"]["total"] >= 1  # the stand-in at chance proposes flips


def test_the_saving_splits_into_memoisation_and_the_tree():
    from src.benchmarks.steady_state import PATTERNS, predicted_steady_state, saving_shares
    predictions = {}
    for name, (mode, layout) in PATTERNS.items():
        pool, _, rng = demo_pool(16, 0, seed=7)
        predictions[name] = predicted_steady_state(pool, layout, char_tokens(), 10**7, 16, mode, K=10, rng=rng)
    # The stand-in ignores order, so every pattern takes the same search path: ours computes the same pool scores.
    ours = [p.per_iteration["pool_scores"]["total"] for n, p in predictions.items() if n != "reference pattern"]
    assert len(set(ours)) == 1
    reference = predictions["reference pattern"]
    assert reference.per_iteration["requests"]["total"] > predictions["ours, tree layout"].per_iteration["requests"]["total"]
    shares = saving_shares(predictions)
    assert shares["total"] == pytest.approx(shares["memoisation"] * shares["tree"])
    assert shares["memoisation"] > 1 and shares["tree"] > 1
    assert saving_shares({"ours, tree layout": predictions["ours, tree layout"]})["memoisation"] is None


def test_iteration_costs_split_by_proposal_add_up_and_refuse_mismatched_lengths():
    from src.benchmarks.iteration_costs import CostCounters, split_by_proposal
    costs = [CostCounters(requests=1, pool_scores=1, computed_tokens=900), CostCounters(),
             CostCounters(requests=2, pool_scores=2, computed_tokens=1500), CostCounters()]
    split = split_by_proposal(costs, [True, False, True, False])
    assert (split["iterations"], split["proposals"], split["proposal_rate"]) == (4, 2, 0.5)
    assert split["per_proposal"]["computed_tokens"]["total"] == 2400
    assert split["per_proposal"]["pool_scores"]["median"] == 1.5
    assert split["per_other_iteration"]["requests"]["max"] == 0
    assert split_by_proposal([], [])["proposal_rate"] is None
    with pytest.raises(ValueError, match="2 iteration costs but 1"):
        split_by_proposal(costs[:2], [True])
