"""The scoring steps of the search: pool -> leave-one-out prompts -> one batched call -> label scores.

A pool's scores depend only on which claims are labeled and how, so they are memoised by that
assignment: the consistency fix and the acceptance step often ask for the same labelling twice.
The prompts go to the engine in the depth-first order of their prefix trie (see prompts.send_order),
which changes what the engine can reuse but not what the model sees.

The scorer only scores: the metric of a labelling and the consistency rules belong to the search,
which computes them from ``pool_scores``.

Under the tree-volatility layout (an experiment) the scorer also keeps ``label_changes``: for each claim, how
often its label differed between two consecutive labellings it was asked to score (memo hits included, so
the count follows the search's calls, not the memo). The layout orders by it; nothing flows back to the search.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any, Hashable, Mapping, Optional, Sequence

from core.llm_api.base_llm import ScoringError
from core.llm_api.faults import PromptsRejected
from core.llm_api.llm import ModelAPI
from core.llm_api.logprobs import NextTokenLogprobs
from src.config.run_config import PromptConfig
from src.data.claims import Claim, labelled_claims
from src.pipeline.label_scores import LabelAbsent, LabelEvidence, TokenMatch, label_evidence
from src.prompts.prompts import (
    LabelStyle,
    PromptLayout,
    demo_orders,
    full_demo_order,
    judge_prompt,
    prompts_in_order,
    send_order,
)

Claims = Mapping[int, Claim]
DEFAULT_MEMO_ENTRIES = 2048


class _LRU(OrderedDict):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get_fresh(self, key: Hashable) -> Optional[Any]:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key: Hashable, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


def whole_pool(claims: Claims) -> list[Claim]:
    """All claims, labeled or not, in uid order: the frame the prompt layout is laid over."""
    return [claims[uid] for uid in sorted(claims)]


def assignment_key(pool: list[Claim]) -> tuple[tuple[int, Optional[int]], ...]:
    return tuple((c.uid, c.label) for c in pool)


class LabelsNotFound(ScoringError):
    """Answers that hold no label token: no score can be made of them."""


def describe_claim(claim: Claim) -> str:
    return f"claim {claim.uid}" + (f" (record {claim.record})" if claim.record is not None else "")


def top_tokens(answer: NextTokenLogprobs, n: int = 5) -> str:
    return ", ".join(f"{token!r} {logprob:.2f}" for token, logprob in sorted(answer, key=lambda e: -e[1])[:n])


class PoolScorer:
    def __init__(
        self,
        model_api: ModelAPI,
        prompts: PromptConfig,
        memo_entries: int = DEFAULT_MEMO_ENTRIES,
    ) -> None:
        """``prompts``: the run's prompt settings (label style, token match, layout, label_absent)."""
        self.model_api = model_api
        self.label_style: LabelStyle = prompts.label_style
        self.token_match: TokenMatch = prompts.token_match
        self.prompt_layout: PromptLayout = prompts.prompt_layout
        self.label_absent: LabelAbsent = prompts.label_absent
        self._pool_memo = _LRU(memo_entries)  # assignment -> ({uid: score}, {uid: label mass})
        self._single_memo = _LRU(memo_entries)
        self.pool_scores_computed = 0
        self.pool_scores_reused = 0
        self.single_predictions_computed = 0  # an unlabeled claim's prediction: one single-prompt request
        self.batch_predictions_computed = 0  # predictions of several unlabeled claims in one batched call
        self.label_changes: Counter[int] = Counter()  # by uid; counted only under the tree-volatility layout
        self._last_labels: dict[int, Optional[int]] = {}

    def _evidence(self, claims: Sequence[Claim], prompts: Sequence[str]) -> list[LabelEvidence]:
        """The label evidence of each claim's answer. Raises LabelsNotFound when no answer holds a label token, or
        (label_absent "stop") when one doesn't; PromptsRejected from the server is re-aimed at the claims."""
        try:
            answers = self.model_api.next_token_logprobs(prompts)
        except PromptsRejected as exc:
            named = ", ".join(describe_claim(claims[i]) for i in exc.positions[:10])
            raise ScoringError(f"{exc} The prompts judge {named}: check that text, or drop it from the data") from None
        evidence = [label_evidence(answer, self.token_match) for answer in answers]
        blind = [i for i, e in enumerate(evidence) if not e.informative]
        if blind and (len(blind) == len(evidence) or self.label_absent == "stop"):
            first = blind[0]
            everywhere = (f"none of the {len(evidence)} answers holds" if len(blind) == len(evidence) and len(evidence) > 1
                          else f"the answer for {describe_claim(claims[first])} does not hold")
            raise LabelsNotFound(
                f"{everywhere} ' True' or ' False' among its top {self.model_api.returned_top_k} next tokens (it starts "
                f"{top_tokens(answers[first])}), so it says nothing about the label. Check --label-style (the label token "
                "must be one the model predicts), that the model is a base model, and on a server that the top-k is wide "
                "enough (exact label logprobs need vLLM >= 0.32)"
                + ("; --label-absent floor scores such answers 0 as the reference does" if len(blind) < len(evidence) else ""))
        return evidence

    def _observe(self, claims: Claims) -> None:
        """Count the labels that changed since the last labelling asked for (a claim getting its first label is no change)."""
        if self.prompt_layout != "tree-volatility":
            return
        for uid, claim in claims.items():
            before = self._last_labels.get(uid)
            if before is not None and claim.label is not None and claim.label != before:
                self.label_changes[uid] += 1
        self._last_labels = {uid: claim.label for uid, claim in claims.items()}

    def _orders(self, pool: list[Claim], claims: Claims) -> list[list[int]]:
        return demo_orders(pool, self.prompt_layout, whole_pool(claims), self.label_changes)

    def _pool_entry(self, claims: Claims) -> tuple[dict[int, float], dict[int, float]]:
        """({uid: score}, {uid: label mass}) of the labelled claims, each predicted from all the others: one batched call."""
        self._observe(claims)
        pool = labelled_claims(claims)
        key = assignment_key(pool)
        cached = self._pool_memo.get_fresh(key)
        if cached is not None:
            self.pool_scores_reused += 1
            return cached
        orders = self._orders(pool, claims)
        prompts = prompts_in_order(pool, self.label_style, orders)
        order = send_order(orders)
        evidence = self._evidence([pool[i] for i in order], [prompts[i] for i in order])
        by_position = dict(zip(order, evidence))
        entry = ({c.uid: by_position[i].logodds for i, c in enumerate(pool)},
                 {c.uid: by_position[i].mass for i, c in enumerate(pool)})
        self._pool_memo.put(key, entry)
        self.pool_scores_computed += 1
        return entry

    def pool_scores(self, claims: Claims) -> dict[int, float]:
        """Each labeled claim's score predicted from all the other labeled claims: one batched call."""
        return self._pool_entry(claims)[0]

    def pool_label_masses(self, claims: Claims) -> dict[int, float]:
        """Each labeled claim's label mass in its leave-one-out answer (the same call as its score)."""
        return self._pool_entry(claims)[1]

    def known_pool_scores(self, claims: Claims) -> dict[int, float]:
        """The pool's scores if already computed, else {}; never calls the model."""
        return (self._pool_memo.get(assignment_key(labelled_claims(claims))) or ({}, {}))[0]

    def known_label_masses(self, claims: Claims) -> dict[int, float]:
        """The pool's label masses if already computed, else {}; never calls the model."""
        return (self._pool_memo.get(assignment_key(labelled_claims(claims))) or ({}, {}))[1]

    def predict_score(self, example: Claim, claims: Claims) -> float:
        """The example's score with every other labeled claim as demonstrations."""
        if example.label is not None:
            # Exactly the prompt its pool score already used.
            return self.pool_scores(claims)[example.uid]
        pool = labelled_claims(claims)
        key = (example.uid, assignment_key(pool))
        cached = self._single_memo.get_fresh(key)
        if cached is not None:
            return cached[0]
        [evidence] = self._evidence([example], [judge_prompt(example, self._demonstrations(pool, claims), self.label_style)])
        self._single_memo.put(key, (evidence.logodds, evidence.mass))
        self.single_predictions_computed += 1
        return evidence.logodds

    def predict_unlabeled(self, claims: Claims) -> dict[int, float]:
        """Every unlabeled claim's score with all labeled claims as demonstrations, by uid: the prompts
        predict_score would send, those not already known going out in one batched call."""
        pool = labelled_claims(claims)
        assignment = assignment_key(pool)
        scores = self.known_predictions(claims)
        missing = [claims[uid] for uid in sorted(claims) if claims[uid].label is None and uid not in scores]
        if not missing:
            return scores
        demonstrations = self._demonstrations(pool, claims)
        evidence = self._evidence(missing, [judge_prompt(c, demonstrations, self.label_style) for c in missing])
        for claim, found in zip(missing, evidence):
            scores[claim.uid] = found.logodds
            self._single_memo.put((claim.uid, assignment), (found.logodds, found.mass))
        self.batch_predictions_computed += 1
        return scores

    def _known_singles(self, claims: Claims) -> dict[int, tuple[float, float]]:
        assignment = assignment_key(labelled_claims(claims))
        known = {uid: self._single_memo.get((uid, assignment)) for uid in claims if claims[uid].label is None}
        return {uid: entry for uid, entry in known.items() if entry is not None}

    def known_predictions(self, claims: Claims) -> dict[int, float]:
        """The unlabeled claims' predictions under this labelling that are already computed; never calls the model."""
        return {uid: score for uid, (score, _) in self._known_singles(claims).items()}

    def known_prediction_masses(self, claims: Claims) -> dict[int, float]:
        """The label mass of each known prediction of an unlabeled claim; never calls the model."""
        return {uid: mass for uid, (_, mass) in self._known_singles(claims).items()}

    def _demonstrations(self, pool: list[Claim], claims: Claims) -> list[Claim]:
        """The labeled claims in the order a claim outside them is judged from (see prompts.full_demo_order)."""
        return [pool[i] for i in full_demo_order(self._orders(pool, claims))]
