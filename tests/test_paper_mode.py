"""--paper-mode: the reference code's behaviour, down to its random draws.

The reference code cannot run here (it needs its own model API and cache), so its control flow is written out
below from a reading of it, with the file and line of each step (src/experiments/ICM.py and ICM_tools.py of
github.com/Jiaxin-Wen/Unsupervised-Elicitation). Both it and our search run on the same deterministic scorer
with an RNG that records every draw; under paper mode the draws, the picked claims, the accepted flips and the
final labels must be the same.
"""
import math
import random

import numpy as np
import pytest

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.data.claims import Claim
from src.search.annealing import ICMSearch, SearchSettings, SearchState, seed_claims
from src.search.consistency import inconsistent_pairs
from src.search.energy import annealing_temperature, labelling_energy, labelling_metric
from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records, sample_pool
from src.config.run_config import PromptConfig
from src.pipeline.pool_scoring import PoolScorer
from src.experiments import ICM
from tests.cli_helpers import call
from tests.stand_in_pipeline import use_stand_in
from tests.conftest import REPO_ROOT
from src.benchmarks.synthetic_model import SyntheticModel

GROUP_SIZE = 4
POOL, NUM_SEED, K = 16, 8, 40
PAPER = dict(rng_draws="reference", repair_loop="reference", post_flip_fix_K=10)


class RecordingRandom(random.Random):
    """random.Random that logs each top-level draw: (method, what decides how much it draws)."""

    def __init__(self, seed: int) -> None:
        self.log: list[tuple] = []
        self._depth = 0
        super().__init__(seed)

    def _record(self, entry: tuple, call):
        if self._depth == 0:
            self.log.append(entry)
        self._depth += 1
        try:
            return call()
        finally:
            self._depth -= 1

    def getrandbits(self, k: int) -> int:  # defined so that shuffle keeps drawing through getrandbits
        return super().getrandbits(k)

    def random(self) -> float:
        return self._record(("random",), super().random)

    def shuffle(self, x) -> None:
        return self._record(("shuffle", len(x)), lambda: super(RecordingRandom, self).shuffle(x))

    def choices(self, population, weights=None, *, cum_weights=None, k=1):
        return self._record(("choices", tuple(weights)), lambda: super(RecordingRandom, self).choices(
            population, weights, cum_weights=cum_weights, k=k))

    def sample(self, population, k, **kwargs):
        return self._record(("sample", len(population), k), lambda: super(RecordingRandom, self).sample(population, k, **kwargs))


def demo_claims() -> list[dict]:
    return normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)


def scorer_for(pool: list[dict], seed: int) -> PoolScorer:
    # A weak, noisy prior, so that seeds start inconsistent and the repair has work to do.
    model = SyntheticModel(pool, [c["label"] for c in pool], seed=seed, prior_weight=0.3, prior_noise=1.0)
    return PoolScorer(ModelAPI(settings=Settings(), route=model), PromptConfig(prompt_layout="reference"))


def labeled(claims: dict) -> dict:
    return {uid: c for uid, c in claims.items() if c.label is not None}


def reference_run(seed: int) -> dict:
    """The reference's search, step by step, on our scorer."""
    rng = RecordingRandom(seed)  # ICM.py:559 random.seed(args.seed)
    # load_data, ICM.py:379-396: records grouped by consistency_id in order of first appearance, then whole
    # groups drawn with random.sample over group indices.
    groups: dict = {}
    for record in demo_claims():
        groups.setdefault(record["consistency_id"], []).append(record)
    train = [record for group in groups.values() for record in group]
    chosen = rng.sample(list(range(len(train) // GROUP_SIZE)), POOL // GROUP_SIZE)
    pool = [train[i * GROUP_SIZE + j] for i in chosen for j in range(GROUP_SIZE)]
    # initialize, ICM.py:406-423: half-True seed labels shuffled, the first num_seed claims get them.
    seed_labels = [1] * (NUM_SEED // 2) + [0] * (NUM_SEED // 2)
    rng.shuffle(seed_labels)
    demos = {uid: Claim.from_record(record, uid, seed_labels[uid] if uid < NUM_SEED else None)
             for uid, record in enumerate(pool)}
    scorer = scorer_for(pool, seed)
    energy = lambda metric: labelling_energy(metric, 30.0)  # noqa: E731  ICM.py:301-302
    dummy = {"train_prob": -1e6, "inconsistent_num": 100000}  # ICM.py:495-501

    def evaluation_pipeline(assignment: dict) -> dict:
        # get_pipeline (ICM.py:142-251) and run_consistencyfix (ICM_tools.py:152-238): the pool's scores, their
        # metric (calculate_accuracy), and pick_two_inconsistent_claims, which shuffles the pairs with the global
        # RNG (ICM_tools.py:107).
        metric = labelling_metric(assignment, scorer.pool_scores(assignment), "mean")
        inconsistent_pairs(labeled(assignment), rng)
        return metric

    def decision_labels(decision, score: int) -> tuple[int, int]:
        # update_assign_based_on_decision, ICM_tools.py:49-65
        if decision.kind == "contradiction":
            return (1, 0) if score > 0 else (0, 1)
        return (1, 1) if score > 0 else (0, 0)

    def fix_inconsistency(demonstrations: dict, cur_metric: dict, K: int) -> tuple[dict, dict]:
        # ICM.py:77-139
        if cur_metric["inconsistent_num"] == 0:  # :79
            return demonstrations, cur_metric
        assignment = labeled(demonstrations)  # :82-83
        best_metric, best_assignment, best_decision_id = cur_metric, assignment, None  # :85-87
        for _ in range(K):  # :88
            decisions = inconsistent_pairs(labeled(assignment), rng)  # propose_consistencyfix, :89-96
            for decision_id, decision in enumerate(decisions):  # :98
                trials = []
                for score in (0, 1):  # :101
                    first, second = decision_labels(decision, score)
                    trial = dict(assignment)
                    trial[decision.first.uid] = assignment[decision.first.uid].relabelled(first)
                    trial[decision.second.uid] = assignment[decision.second.uid].relabelled(second)
                    trials.append((trial, evaluation_pipeline(trial)))  # :102-116
                best_trial = int(np.argmax([energy(m) for _, m in trials]))  # :117-121
                if energy(trials[best_trial][1]) >= energy(best_metric):  # :123-127
                    best_assignment, best_metric = trials[best_trial]
                    best_decision_id = decision_id
                    break
            if best_decision_id is None:  # :128-129, never reset between rounds
                break
            assignment = best_assignment  # :130-134
            if best_metric["inconsistent_num"] == 0:
                break
        return {**demonstrations, **assignment}, best_metric  # :136-139

    flip_cnt, picked, accepted = 0, [], []
    cur_metric = None
    for iteration in range(K):  # ICM.py:447
        if iteration == 0:  # :452-465
            cur_metric = evaluation_pipeline(labeled(demos))
            demos, cur_metric = fix_inconsistency(demos, cur_metric, 10)
        cur_pool = labeled(demos)  # :467-469
        weights = [1] * len(demos)  # :471-479
        for uid in demos:
            if uid in cur_pool:
                for mate in demos:
                    if demos[mate].group_id == demos[uid].group_id and mate not in cur_pool:
                        weights[mate] = 100
        example_id = rng.choices(list(demos), k=1, weights=weights)[0]  # :481
        picked.append(example_id)
        new_label = int(scorer.predict_score(demos[example_id], cur_pool) > 0)  # :484-490, predict_assignment :254-276
        if demos[example_id].label != new_label:  # :492
            candidate = {**demos, example_id: demos[example_id].relabelled(new_label)}  # :493-494
            candidate, _ = fix_inconsistency(candidate, dummy, 10)  # :503-510, K hard-coded
            metric = evaluation_pipeline(labeled(candidate))  # :512-525
            temperature = annealing_temperature(flip_cnt, 10.0, 0.01, 0.99, "log")  # :526-528
            delta = energy(metric) - energy(cur_metric)
            # :533-535; exp overflows there for large gains, which the draw order does not depend on
            if rng.random() < (math.inf if delta / temperature > 700 else math.exp(delta / temperature)):
                demos, cur_metric = candidate, metric  # :537-539
                flip_cnt += 1
                accepted.append(iteration)
    return {"draws": rng.log, "picked": picked, "accepted": accepted,
            "labels": [demos[uid].label for uid in sorted(demos)], "pool": [c["prompt"] for c in pool]}


def our_run(seed: int, **search_settings) -> dict:
    rng = RecordingRandom(seed)
    pool = sample_pool(demo_claims(), TESTBED_SPECS["demo"], POOL, rng, "demo")
    state = SearchState(claims=seed_claims(pool, NUM_SEED, rng))
    search = ICMSearch(scorer_for(pool, seed), SearchSettings(K=K, consistency_fix_K=10, **search_settings), rng, state)
    log: list[dict] = []
    search.run(log.append)
    return {"draws": rng.log, "picked": [r["uid"] for r in log], "accepted": [r["iter"] for r in log if r["accepted"]],
            "labels": [state.claims[uid].label for uid in sorted(state.claims)], "pool": [c["prompt"] for c in pool]}


@pytest.mark.parametrize("seed", range(12))
def test_paper_mode_replays_the_reference_draw_for_draw(seed):
    reference, ours = reference_run(seed), our_run(seed, **PAPER)
    assert ours["pool"] == reference["pool"]
    assert ours["draws"] == reference["draws"]
    assert ours["picked"] == reference["picked"]
    assert ours["accepted"] == reference["accepted"]
    assert ours["labels"] == reference["labels"]


def test_the_runs_exercise_what_paper_mode_changes():
    """Without the reference's draws, or with the other repair exit, the same seeds take other paths: so the
    replay test above would catch either being lost."""
    runs = [(reference_run(seed), our_run(seed, rng_draws="minimal"), our_run(seed, repair_loop="stop-at-first-failure"))
            for seed in range(12)]
    assert all(minimal["draws"] != reference["draws"] for reference, minimal, _ in runs)
    assert sum(early["draws"] != reference["draws"] for reference, _, early in runs) >= 1
    assert sum(len(reference["accepted"]) for reference, _, _ in runs) >= 12  # flips were accepted, not only proposed


def test_minimal_draws_and_the_early_exit_leave_a_deterministic_search_where_it_would_be_in_distribution():
    # Same scorer, other draws: each path is internally consistent (all claims labelled, no inconsistency left).
    for settings in (dict(rng_draws="minimal"), dict(repair_loop="stop-at-first-failure")):
        run = our_run(3, **settings)
        assert None not in run["labels"]


@pytest.mark.parametrize("flags, message", [
    (["--label-style", "space-in-label"], "--label-style space-in-label contradicts --paper-mode, which sets --label-style reference"),
    (["--token-match", "whole"], "--token-match whole contradicts --paper-mode, which sets --token-match substring"),
    (["--label-logprobs", "auto"], "--label-logprobs auto contradicts --paper-mode"),
    (["--rng-draws", "minimal"], "--rng-draws minimal contradicts --paper-mode"),
    (["--repair-loop", "stop-at-first-failure"], "--repair-loop stop-at-first-failure contradicts --paper-mode"),
    (["--post-flip-fix-K", "5"], "--post-flip-fix-K 5 contradicts --paper-mode, which sets --post-flip-fix-K 10"),
    (["--prompt-layout", "tree"], "--prompt-layout tree contradicts --paper-mode"),
    (["--mp-reduce", "sum"], "--mp-reduce sum contradicts --paper-mode"),
    (["--allow-both-false"], "--allow-both-false contradicts --paper-mode"),
    (["--no-gold-consistency"], "--no-gold-consistency contradicts --paper-mode"),
])
def test_a_flag_that_contradicts_paper_mode_is_refused_by_name(flags, message, tmp_path, capsys):
    code, stderr = call(ICM, ["--testbed", "demo", "--paper-mode", *flags, "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and message in stderr, stderr
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()


def test_paper_mode_is_recorded_kept_on_resume_and_agreeing_flags_are_accepted(tmp_path, monkeypatch, capsys):
    import json

    use_stand_in(monkeypatch, tmp_path)  # what is recorded and kept is the point here, not the model's scores

    def run_icm(*flags: str) -> tuple[int, str]:
        return call(ICM, flags, capsys)

    out = tmp_path / "run"
    code, stderr = run_icm("--testbed", "demo", "--batch_size", "8", "--num_seed", "4", "--K", "2", "--paper-mode",
                           "--label-style", "reference", "--no-progress", "--output-dir", str(out))
    assert code == 0, stderr
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["paper_mode"] is True
    assert {k: settings[k] for k in ("label_style", "token_match", "label_logprobs", "rng_draws", "repair_loop",
                                     "post_flip_fix_K", "mp_reduce")} == {
        "label_style": "reference", "token_match": "substring", "label_logprobs": "topk", "rng_draws": "reference",
        "repair_loop": "reference", "post_flip_fix_K": 10, "mp_reduce": "mean"}
    assert json.loads((out / "summary.json").read_text())["settings"]["paper_mode"] is True
    code, stderr = run_icm("--resume", str(out), "--K", "3", "--no-progress")
    assert code == 0, stderr
    assert json.loads((out / "run.json").read_text())["settings"]["paper_mode"] is True
    assert json.loads((out / "summary.json").read_text())["settings"]["token_match"] == "substring"
    code, stderr = run_icm("--resume", str(out), "--token-match", "whole")
    assert code == 2 and "--token-match" in stderr


def test_order_sensitivity_maps_scores_back_to_their_claims(data_dir):
    # The synthetic model's demonstrations vote regardless of their order, so every order must give the same
    # score for each claim: any change would mean a score was filed under the wrong claim.
    import importlib.util

    spec = importlib.util.spec_from_file_location("order_tool", REPO_ROOT / "scripts" / "measure_order_sensitivity.py")
    order_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(order_tool)
    pool = order_tool.gold_pool(data_dir, 16, seed=1)
    api = ModelAPI(settings=Settings(), route=SyntheticModel(pool, [c["label"] for c in pool], seed=1))
    entry = order_tool.measure_pool(api, pool, permutations=3, seed=1)
    assert len(entry["permutations"]) == 3
    for condition in [*entry["permutations"], entry["tree"]]:
        assert condition["mean_abs_change"] == pytest.approx(0.0, abs=1e-12)
        assert condition["label_agreement"] == 1.0
    moved = {"pools": {16: {**entry, "tree": {**entry["tree"], "mean_abs_change": 0.5}}}}
    assert "keep it opt-in" in order_tool.verdict(moved)
    assert "another valid order" in order_tool.verdict({"pools": {16: entry}})
