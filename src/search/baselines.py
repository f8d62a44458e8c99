"""The cheap labellers beside ICM (issue 23): random labels, bootstrapped few-shot labels, and bootstrapped labels
with the consistency repair after each round (Shrivastava, Qi, Canavan et al., "Eliciting base models with simple
unsupervised techniques", LessWrong 2025).

They label the same pool with the same scorer (src/pipeline/pool_scoring.PoolScorer, through the search's Scorer
protocol) and the same RNG as ICM, and offer run.py what it uses of ICMSearch (the ``Labeller`` protocol), so a
baseline run writes the same run directory: labels.jsonl, log.jsonl (one line per round), checkpoint.json and
summary.json, and resumes like an ICM run.

- ``random``: every pool claim gets a random label, half True and half False (one shuffle of the run's RNG, as
  ICM's seed labels are drawn; the extra claim of an odd pool False), scored once so the energy, the metric and
  the label masses are recorded as ICM's are. One round, which changes nothing.
- ``bootstrap``: starts from those random labels. Each round relabels every claim by its leave-one-out score with
  all other current labels as demonstrations (``scorer.pool_scores``: score > 0 is True), until a round changes
  no label (converged) or ``bootstrap_rounds`` rounds are done.
  It starts from random labels rather than zero-shot predictions: a zero-shot prediction needs a prompt without
  demonstrations, a format the search never scores, and random labels are the blog post's starting point.
- ``bootstrap-consistency``: the same, and each round's labels go through ICM's consistency repair
  (ICMSearch.fix_inconsistency, src/search/consistency.py), so the repair keeps a change only if the energy
  doesn't fall.

Cost, in pool scores (one batched call scoring every labelled claim): random 1. A bootstrap round scores the
labels the round before made, so a run that converges after R rounds costs R pool scores and one stopped by the
limit R + 1 (its final labels are scored for the record). The repair adds a pool score per labelling it tries.

The annealing's settings (``K``, ``num_seed``, the temperatures, ``post_flip_fix_K``) mean nothing here;
UNUSED_SETTINGS says which settings each labeller ignores.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Optional, Protocol, Sequence

from src.config.run_config import SearchConfig
from src.data.claims import share_true
from src.search.annealing import Claims, ICMSearch, Scorer, SearchState, seed_claims
from src.search.energy import LabellingMetric

ICM = "icm"
RANDOM = "random"
BOOTSTRAP = "bootstrap"
BOOTSTRAP_CONSISTENCY = "bootstrap-consistency"
BOOTSTRAPS = (BOOTSTRAP, BOOTSTRAP_CONSISTENCY)
RANDOM_ROUNDS = 1  # the random labeller's one round: its labels, scored

_ANNEALING = frozenset({"K", "num_seed", "initial_T", "final_T", "decay", "scheduler", "post_flip_fix_K"})
_REPAIR = frozenset({"consistency_fix_K", "allow_both_false", "repair_loop", "rng_draws"})
# The settings each labeller never reads (a run says so when one of them is passed). alpha and mp_reduce stay
# meaningful for every labeller: they make the energy that every run records.
UNUSED_SETTINGS: dict[str, frozenset[str]] = {
    ICM: frozenset({"bootstrap_rounds"}),
    RANDOM: _ANNEALING | _REPAIR | {"bootstrap_rounds"},
    BOOTSTRAP: _ANNEALING | _REPAIR,
    BOOTSTRAP_CONSISTENCY: _ANNEALING,
}
# The setting that says how long a run of each labeller is meant to be (None: a fixed length).
LENGTH_SETTING: dict[str, Optional[str]] = {ICM: "K", RANDOM: None, BOOTSTRAP: "bootstrap_rounds",
                                            BOOTSTRAP_CONSISTENCY: "bootstrap_rounds"}


class Labeller(Protocol):
    """What run.py uses of whoever labels the pool (ICMSearch, or a baseline here)."""
    state: SearchState
    scorer: Scorer

    def energy(self, metric: LabellingMetric) -> float: ...

    def initialise(self) -> None: ...

    def run(self, on_step: Callable[[dict], None] = ...) -> SearchState: ...


def planned_iterations(settings: SearchConfig) -> int:
    """How many log lines (ICM's iterations, a baseline's rounds) a run of ``settings`` is meant to make, at most."""
    length = LENGTH_SETTING[settings.labeller]
    return RANDOM_ROUNDS if length is None else getattr(settings, length)


def initial_claims(pool: Sequence[dict[str, Any]], settings: SearchConfig, num_seed: int, rng: random.Random) -> Claims:
    """The pool as claims with the labels its labeller starts from: ICM's ``num_seed`` random seed labels, or for a
    baseline the whole pool labelled at random (half True, half False; one shuffle of ``rng`` either way)."""
    return seed_claims(list(pool), num_seed if settings.labeller == ICM else len(pool), rng)


def make_labeller(scorer: Scorer, settings: SearchConfig, rng: random.Random, state: SearchState) -> Labeller:
    """The labeller ``settings.labeller`` names, over ``state`` (built by initial_claims, or a resumed one)."""
    if settings.labeller == ICM:
        return ICMSearch(scorer, settings, rng, state)
    if settings.labeller == RANDOM:
        return RandomLabeller(scorer, settings, rng, state)
    if settings.labeller in BOOTSTRAPS:
        return BootstrapLabeller(scorer, settings, rng, state, repair=settings.labeller == BOOTSTRAP_CONSISTENCY)
    raise ValueError(f"unknown labeller {settings.labeller!r}")


class BaselineLabeller:
    """A labeller that labels the whole pool at once, in rounds; ``state.iteration`` counts the rounds done."""

    def __init__(self, scorer: Scorer, settings: SearchConfig, rng: random.Random, state: SearchState) -> None:
        self.scorer, self.settings, self.rng, self.state = scorer, settings, rng, state
        # ICM's metric, energy and consistency repair, over the same state and RNG: reused, not rewritten.
        self.search = ICMSearch(scorer, settings, rng, state)

    def energy(self, metric: LabellingMetric) -> float:
        return self.search.energy(metric)

    @property
    def planned_rounds(self) -> int:
        return planned_iterations(self.settings)

    @property
    def done(self) -> bool:
        return self.state.converged or self.state.iteration >= self.planned_rounds

    def initialise(self) -> None:
        """Score the starting labels (one pool score), unless a resumed state already holds their metric."""
        if self.state.metric is None:
            self.state.metric = self.search.metric(self.state.claims)

    def step(self) -> dict:
        raise NotImplementedError

    def run(self, on_step: Callable[[dict], None] = lambda record: None) -> SearchState:
        self.initialise()
        while not self.done:
            on_step(self.step())
        return self.state

    def summary_fields(self) -> dict[str, Any]:
        """What summary.json adds for this labeller."""
        return {}

    def _finish_round(self, claims: Claims, metric: LabellingMetric, changed: int) -> dict:
        """Make ``claims`` the current labels and return the round's log line: ICM's step record's keys (those
        about one proposed flip are None), plus ``changed``, the labels this round changed."""
        state = self.state
        record: dict[str, Any] = {
            "iter": state.iteration, "uid": None, "score": None, "old_label": None, "new_label": None,
            "proposed": None, "accepted": None, "candidate_energy": None,
        }
        state.claims, state.metric = claims, metric
        state.iteration += 1
        state.flip_cnt += changed
        record.update(
            flip_cnt=state.flip_cnt, energy=self.energy(metric), train_prob=metric["train_prob"],
            inconsistent_num=metric["inconsistent_num"], train_accuracy=metric["train_accuracy"],
            labelled=metric["train_size"], temperature=None, share_true=share_true(claims), changed=changed,
        )
        return record


class RandomLabeller(BaselineLabeller):
    """Random labels for the whole pool, scored once: today's random-label condition, as a run."""

    def step(self) -> dict:
        return self._finish_round(self.state.claims, self.state.metric, changed=0)


class BootstrapLabeller(BaselineLabeller):
    """Bootstrapped few-shot labels: each round relabels every claim by its leave-one-out prediction from all the
    other current labels; with ``repair``, the consistency repair follows each round."""

    def __init__(self, scorer: Scorer, settings: SearchConfig, rng: random.Random, state: SearchState,
                 repair: bool) -> None:
        super().__init__(scorer, settings, rng, state)
        self.repair = repair

    def step(self) -> dict:
        before = self.state.claims
        # The scores of the current labels: the pool score their metric came from (a memo hit), or after a
        # resume the same call again.
        scores = self.scorer.pool_scores(before)
        claims = {uid: claim.relabelled(int(scores[uid] > 0)) for uid, claim in before.items()}
        metric = self.search.metric(claims)
        if self.repair:
            claims, metric = self.search.fix_inconsistency(claims, metric)
        changed = sum(claims[uid].label != before[uid].label for uid in before)
        if changed == 0:
            self.state.converged = True
        return self._finish_round(claims, metric, changed)

    def summary_fields(self) -> dict[str, Any]:
        return {"converged": self.state.converged, "rounds": self.state.iteration}
