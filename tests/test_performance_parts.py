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
