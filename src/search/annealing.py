"""The ICM search: simulated annealing over labellings of a pool (Wen et al. 2025, Algorithm 1).

Every random choice draws from the one ``random.Random`` passed in, so a seed fixes the run on a
deterministic scorer. With ``rng_draws="reference"`` and ``repair_loop="reference"`` the draws are the
reference code's, one for one (src/experiments/ICM.py and ICM_tools.py of Jiaxin-Wen/Unsupervised-Elicitation),
so the same seed follows the same path; tests/test_paper_mode.py spells that order out.

The scorer only scores (each labelled claim's leave-one-out score); the metric, the energy and the consistency
rules are the search's own (src/search/energy.py, src/search/consistency.py).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

import numpy as np

from src.config.run_config import SearchConfig
from src.data.claims import Claim, share_true
from src.search.consistency import InconsistentPair, decision_options, inconsistent_pairs, relabel_pair
from src.search.energy import (
    LabellingMetric,
    annealing_temperature,
    labelling_energy,
    labelling_metric,
    metropolis_accept,
)

Claims = dict[int, Claim]
# Unlabeled claims whose consistency group already has a labeled member are this much likelier to be
# picked next, so groups fill up and their consistency rules start to bite.
SAME_GROUP_WEIGHT = 100


class Scorer(Protocol):
    def pool_scores(self, claims: Mapping[int, Claim]) -> dict[int, float]:
        """Each labelled claim's score (log-odds of True) predicted from all the other labelled claims, by uid."""
        ...

    def predict_score(self, example: Claim, claims: Mapping[int, Claim]) -> float: ...


# The search's settings are the run configuration's search section (their defaults and meanings are there).
SearchSettings = SearchConfig


@dataclass
class SearchState:
    claims: Claims
    metric: Optional[LabellingMetric] = None  # None until the seed labels are scored
    iteration: int = 0  # ICM's iterations; a baseline's rounds (src/search/baselines.py)
    flip_cnt: int = 0  # accepted flips; a baseline's labels changed so far
    converged: bool = False  # a bootstrap labeller's last round changed no label (ICM never sets it)
    # A bootstrap labeller's labellings so far, one per round done (0: the start), each {"round", "labels" (one
    # character per claim in uid order: 0, 1 or - for none), "metric"}; and, once a round repeated one of them,
    # the cycle it closed: {"length", "kept_round"} (src/search/baselines.py). ICM keeps neither.
    seen: list[dict[str, Any]] = field(default_factory=list)
    cycle: Optional[dict[str, int]] = None


def seed_claims(pool: list[dict[str, Any]], num_seed: int, rng: random.Random) -> Claims:
    """Number the pool's records (src/data/testbeds.py) as Claims and give the first ``num_seed`` random labels,
    half True and half False (one shuffle of the search's RNG); an odd ``num_seed``'s extra label is False.

    The record's label becomes the claim's ``gold_label``, for reporting only.
    """
    seed_labels = [1] * (num_seed // 2) + [0] * (num_seed - num_seed // 2)
    rng.shuffle(seed_labels)
    return {uid: Claim.from_record(record, uid, seed_labels[uid] if uid < num_seed else None, seed=uid < num_seed)
            for uid, record in enumerate(pool)}


class ICMSearch:
    def __init__(self, scorer: Scorer, settings: SearchSettings, rng: random.Random, state: SearchState) -> None:
        self.scorer = scorer
        self.settings = settings
        self.rng = rng
        self.state = state
        self.uids = sorted(state.claims)
        by_group: dict[Any, list[int]] = {}
        for uid in self.uids:
            by_group.setdefault(state.claims[uid].group_id, []).append(uid)
        self.groupmates = {uid: by_group[state.claims[uid].group_id] for uid in self.uids}

    def energy(self, metric: LabellingMetric) -> float:
        return labelling_energy(metric, self.settings.alpha)

    def initialise(self) -> None:
        """Score the seed labels and make them consistent (the reference's iteration-0 step)."""
        if self.state.metric is not None:
            return
        metric = self.evaluate(self.state.claims)
        self.state.claims, self.state.metric = self.fix_inconsistency(self.state.claims, metric)

    def metric(self, claims: Claims) -> LabellingMetric:
        """The metric of a labelling, from the scorer's pool scores (memoised there: a labelling is scored once)."""
        return labelling_metric(claims, self.scorer.pool_scores(claims), self.settings.mp_reduce)

    def evaluate(self, claims: Claims) -> LabellingMetric:
        """The metric of a labelling, at a point where the reference runs an evaluation pipeline."""
        metric = self.metric(claims)
        if self.settings.rng_draws == "reference":
            # The reference's pipeline shuffles the pairs it counts (ICM_tools.py:107); only the draws matter here.
            self.rng.shuffle(list(range(metric["inconsistent_num"])))
        return metric

    def fix_inconsistency(self, claims: Claims, metric: Optional[LabellingMetric],
                          rounds: Optional[int] = None) -> tuple[Claims, LabellingMetric]:
        """Greedy repair: relabel one inconsistent pair at a time, keeping a change that doesn't lower the energy.

        ``metric`` None means any first repair is kept (the reference passes a dummy metric of -1e6 there).
        Stops after ``rounds`` (default ``consistency_fix_K``) rounds, when nothing is inconsistent, or when a
        round doesn't help (``repair_loop`` says whether that is any round or only while none has helped yet).
        """
        if metric is not None and metric["inconsistent_num"] == 0:
            return claims, metric
        best_claims, best_metric = claims, metric
        best_energy = -math.inf if metric is None else self.energy(metric)
        helped_before = False
        for _ in range(self.settings.consistency_fix_K if rounds is None else rounds):
            pairs = self.inconsistent_pairs(best_claims)
            improved = False
            for pair in pairs:
                trials = []
                for labels in decision_options(pair, self.settings.allow_both_false):
                    candidate = relabel_pair(best_claims, pair, labels)
                    trials.append((candidate, self.evaluate(candidate)))
                energies = [self.energy(m) for _, m in trials]
                pick = int(np.argmax(energies))
                if energies[pick] >= best_energy:
                    (best_claims, best_metric), best_energy = trials[pick], energies[pick]
                    improved = True
                    break
            helped_before = helped_before or improved
            gave_up = not helped_before if self.settings.repair_loop == "reference" else not improved
            if gave_up or best_metric["inconsistent_num"] == 0:
                break
        if best_metric is None:
            # Nothing was repaired; the reference returns its dummy metric here, and the caller evaluates again.
            best_metric = self.metric(best_claims)
        return best_claims, best_metric

    def inconsistent_pairs(self, claims: Claims) -> list[InconsistentPair]:
        """The labelled claims' inconsistent pairs, in a random order drawn from the search's RNG."""
        return inconsistent_pairs(claims, self.rng)

    def pick_example(self) -> int:
        claims = self.state.claims
        weights = [1] * len(self.uids)
        for uid in self.uids:
            if claims[uid].label is not None:
                for mate in self.groupmates[uid]:
                    if claims[mate].label is None:
                        weights[mate] = SAME_GROUP_WEIGHT
        return self.rng.choices(self.uids, weights=weights, k=1)[0]

    def step(self) -> dict:
        """One iteration: pick a claim, predict its label, and if that changes it, repair and accept or reject."""
        state, settings = self.state, self.settings
        uid = self.pick_example()
        score = self.scorer.predict_score(state.claims[uid], state.claims)
        new_label = int(score > 0)
        old_label = state.claims[uid].label
        temperature = annealing_temperature(state.flip_cnt, settings.initial_T, settings.final_T, settings.decay, settings.scheduler)
        record: dict[str, Any] = {
            "iter": state.iteration, "uid": uid, "score": score, "old_label": old_label, "new_label": new_label,
            "proposed": old_label != new_label, "accepted": False, "candidate_energy": None,
        }
        if old_label != new_label:
            candidate = {**state.claims, uid: state.claims[uid].relabelled(new_label)}
            candidate, _ = self.fix_inconsistency(candidate, None, settings.post_flip_fix_K)
            candidate_metric = self.evaluate(candidate)
            delta = self.energy(candidate_metric) - self.energy(state.metric)
            accepted = metropolis_accept(delta, temperature, self.rng.random())
            record.update(accepted=accepted, candidate_energy=self.energy(candidate_metric))
            if accepted:
                state.claims, state.metric = candidate, candidate_metric
                state.flip_cnt += 1
        state.iteration += 1
        metric = state.metric
        record.update(
            flip_cnt=state.flip_cnt, energy=self.energy(metric), train_prob=metric["train_prob"],
            inconsistent_num=metric["inconsistent_num"], train_accuracy=metric["train_accuracy"],
            labelled=metric["train_size"], temperature=temperature, share_true=share_true(state.claims),
        )
        return record

    def run(self, on_step: Callable[[dict], None] = lambda record: None) -> SearchState:
        self.initialise()
        while self.state.iteration < self.settings.K:
            on_step(self.step())
        return self.state
