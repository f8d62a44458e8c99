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
  all other current labels as demonstrations (``scorer.pool_scores``: score > 0 is True), until a round gives a
  labelling seen before (at an earlier round, or the start) or ``bootstrap_rounds`` rounds are done. A round that
  changes no label is the cycle of length 1: ``converged``. A longer cycle is possible, because every label
  changes at once (synchronous relabelling): on a small pool every claim may flip each round, so the labels
  oscillate and the round limit's parity would pick the result. The run then stops and keeps the labelling of
  the cycle with the highest energy (the earliest on a tie): the energy is the labeller's own objective, the one
  the consistency repair maximises too, and every labelling of the cycle was scored already, so choosing costs
  no model call. summary.json and the round's log line record ``cycle_length`` and ``kept_round`` (the rounds
  after which the kept labels stood; 0 the start); ``converged`` stays false. The labellings seen are kept in
  the checkpoint (SearchState.seen), so a resumed run finds the same cycle.
  It starts from random labels rather than zero-shot predictions: a zero-shot prediction needs a prompt without
  demonstrations, a format the search never scores, and random labels are the blog post's starting point.
- ``bootstrap-consistency``: the same, and each round's labels go through ICM's consistency repair
  (ICMSearch.fix_inconsistency, src/search/consistency.py), so the repair keeps a change only if the energy
  doesn't fall.

Cost, in pool scores (one batched call scoring every labelled claim): random 1. A bootstrap round scores the
labels the round before made, so a run that converges after R rounds costs R pool scores and one stopped by the
limit R + 1 (its final labels are scored for the record). The repair adds a pool score per labelling it tries.

A stop (Ctrl-C, SIGTERM) is checked before each of a round's model calls (``check_stop``): the round's new
labelling and every labelling the repair tries. A round stopped midway is dropped whole (the state changes only
when a round ends), and a resume redoes it from the last checkpoint.

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


def _no_stop() -> None:
    return None


def make_labeller(scorer: Scorer, settings: SearchConfig, rng: random.Random, state: SearchState,
                  check_stop: Callable[[], None] = _no_stop) -> Labeller:
    """The labeller ``settings.labeller`` names, over ``state`` (built by initial_claims, or a resumed one).
    ``check_stop`` raises to stop a baseline within a round (GracefulStop.check); ICM checks between iterations
    only, in its caller."""
    if settings.labeller == ICM:
        return ICMSearch(scorer, settings, rng, state)
    if settings.labeller == RANDOM:
        return RandomLabeller(scorer, settings, rng, state, check_stop)
    if settings.labeller in BOOTSTRAPS:
        return BootstrapLabeller(scorer, settings, rng, state, repair=settings.labeller == BOOTSTRAP_CONSISTENCY,
                                 check_stop=check_stop)
    raise ValueError(f"unknown labeller {settings.labeller!r}")


class _StoppableSearch(ICMSearch):
    """ICM's metric, energy and repair, asking ``check_stop`` before each evaluation the repair makes (each a pool
    score, unless that labelling was scored before), so a stop needn't wait for up to --consistency_fix_K rounds
    of them."""

    def __init__(self, scorer: Scorer, settings: SearchConfig, rng: random.Random, state: SearchState,
                 check_stop: Callable[[], None]) -> None:
        super().__init__(scorer, settings, rng, state)
        self.check_stop = check_stop

    def evaluate(self, claims: Claims) -> LabellingMetric:
        self.check_stop()
        return super().evaluate(claims)


def labels_key(claims: Claims) -> str:
    """A labelling as one character per claim in uid order: 0, 1, or - for a claim without a label."""
    return "".join("-" if claims[uid].label is None else str(claims[uid].label) for uid in sorted(claims))


def _relabelled(claims: Claims, key: str) -> Claims:
    """``claims`` with the labels ``labels_key`` wrote as ``key``."""
    return {uid: claims[uid].relabelled(None if mark == "-" else int(mark)) for uid, mark in zip(sorted(claims), key)}


class BaselineLabeller:
    """A labeller that labels the whole pool at once, in rounds; ``state.iteration`` counts the rounds done."""

    def __init__(self, scorer: Scorer, settings: SearchConfig, rng: random.Random, state: SearchState,
                 check_stop: Callable[[], None] = _no_stop) -> None:
        self.scorer, self.settings, self.rng, self.state = scorer, settings, rng, state
        self.check_stop = check_stop
        # ICM's metric, energy and consistency repair, over the same state and RNG: reused, not rewritten.
        self.search = _StoppableSearch(scorer, settings, rng, state, check_stop)

    def energy(self, metric: LabellingMetric) -> float:
        return self.search.energy(metric)

    @property
    def planned_rounds(self) -> int:
        return planned_iterations(self.settings)

    @property
    def done(self) -> bool:
        state = self.state
        return state.converged or state.cycle is not None or state.iteration >= self.planned_rounds

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

    def outcome_note(self) -> Optional[str]:
        """A line for stderr about how the run ended, when that needs saying."""
        return None

    def _finish_round(self, claims: Claims, metric: LabellingMetric, changed: int) -> dict:
        """Make ``claims`` the current labels and return the round's log line: ICM's step record's keys (those
        about one proposed flip are None), plus ``changed``, the labels this round changed, and the cycle the
        round closed (``cycle_length``, ``kept_round``; None while none is found)."""
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
            cycle_length=None if state.cycle is None else state.cycle["length"],
            kept_round=None if state.cycle is None else state.cycle["kept_round"],
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
                 repair: bool, check_stop: Callable[[], None] = _no_stop) -> None:
        super().__init__(scorer, settings, rng, state, check_stop)
        self.repair = repair

    def initialise(self) -> None:
        """Score the start, and remember it as the labelling seen at round 0. A run resumed from a checkpoint that
        kept no labellings (written before they were kept) remembers its current one from its round on."""
        super().initialise()
        if not self.state.seen:
            self.state.seen.append(self._seen(self.state.iteration, self.state.claims, self.state.metric))

    @staticmethod
    def _seen(round_done: int, claims: Claims, metric: LabellingMetric) -> dict[str, Any]:
        return {"round": round_done, "labels": labels_key(claims), "metric": metric}

    def step(self) -> dict:
        state = self.state
        before = state.claims
        # The scores of the current labels: the pool score their metric came from (a memo hit), or after a
        # resume the same call again.
        scores = self.scorer.pool_scores(before)
        claims = {uid: claim.relabelled(int(scores[uid] > 0)) for uid, claim in before.items()}
        self.check_stop()
        metric = self.search.metric(claims)
        if self.repair:
            claims, metric = self.search.fix_inconsistency(claims, metric)
        key = labels_key(claims)
        first = next((i for i, seen in enumerate(state.seen) if seen["labels"] == key), None)
        if first is None:
            state.seen.append(self._seen(state.iteration + 1, claims, metric))
        else:
            # A labelling seen before: the labels go round the cycle state.seen[first:] from here on. Keep its
            # labelling of the highest energy; max() keeps the earliest of equals.
            cycle = state.seen[first:]
            kept = max(cycle, key=lambda seen: self.energy(seen["metric"]))
            state.cycle = {"length": len(cycle), "kept_round": kept["round"]}
            state.converged = len(cycle) == 1  # the round changed no label
            claims, metric = _relabelled(claims, kept["labels"]), kept["metric"]
        changed = sum(claims[uid].label != before[uid].label for uid in before)
        return self._finish_round(claims, metric, changed)

    def summary_fields(self) -> dict[str, Any]:
        cycle = self.state.cycle
        return {"converged": self.state.converged, "rounds": self.state.iteration,
                "cycle_length": None if cycle is None else cycle["length"],
                "kept_round": None if cycle is None else cycle["kept_round"]}

    def outcome_note(self) -> Optional[str]:
        cycle = self.state.cycle
        if cycle is None or cycle["length"] == 1:
            return None
        return (f"note: the labels went round a cycle of {cycle['length']} labellings (round {self.state.iteration} "
                f"repeated round {self.state.iteration - cycle['length']}'s) and will not settle: kept the one of the "
                f"highest energy, which stood after round {cycle['kept_round']}")
