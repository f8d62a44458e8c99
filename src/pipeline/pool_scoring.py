"""The scoring steps of the search: pool -> leave-one-out prompts -> one batched call -> label scores.

A pool's scores depend only on which claims are labeled and how, so they are memoised by that
assignment: the consistency fix and the acceptance step often ask for the same labelling twice.
The prompts go to the engine in the depth-first order of their prefix trie (see prompts.send_order),
which changes what the engine can reuse but not what the model sees.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Mapping, Optional

from core.llm_api.llm import ModelAPI
from src.experiments.ICM_tools import calculate_accuracy, pick_two_inconsistent_claims
from src.experiments.label_scores import TokenMatch, label_logodds
from src.experiments.prompts import (
    LabelStyle,
    PromptLayout,
    demo_orders,
    full_demo_order,
    judge_prompt,
    prompts_in_order,
    send_order,
)

Claims = Mapping[int, dict[str, Any]]
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


def labeled_pool(claims: Claims) -> list[dict[str, Any]]:
    """Labeled claims in uid order: the positions that demo_orders and the prompt layouts refer to."""
    return [claims[uid] for uid in sorted(claims) if claims[uid]["label"] is not None]


def whole_pool(claims: Claims) -> list[dict[str, Any]]:
    """All claims, labeled or not, in uid order: the frame the prompt layout is laid over."""
    return [claims[uid] for uid in sorted(claims)]


def assignment_key(pool: list[dict[str, Any]]) -> tuple[tuple[int, int], ...]:
    return tuple((c["uid"], c["label"]) for c in pool)


class PoolScorer:
    def __init__(
        self,
        model_api: ModelAPI,
        label_style: LabelStyle = "space-in-label",
        token_match: TokenMatch = "whole",
        memo_entries: int = DEFAULT_MEMO_ENTRIES,
        prompt_layout: PromptLayout = "reference",
        mp_reduce: str = "mean",
    ) -> None:
        self.model_api = model_api
        self.mp_reduce = mp_reduce
        self.label_style = label_style
        self.token_match = token_match
        self.prompt_layout = prompt_layout
        self._pool_memo = _LRU(memo_entries)
        self._single_memo = _LRU(memo_entries)
        self.pool_scores_computed = 0
        self.pool_scores_reused = 0
        self.single_predictions_computed = 0  # an unlabeled claim's prediction: one single-prompt request
        self.batch_predictions_computed = 0  # predictions of several unlabeled claims in one batched call

    def pool_scores(self, claims: Claims) -> dict[int, float]:
        """Each labeled claim's score predicted from all the other labeled claims: one batched call."""
        pool = labeled_pool(claims)
        key = assignment_key(pool)
        cached = self._pool_memo.get_fresh(key)
        if cached is not None:
            self.pool_scores_reused += 1
            return cached
        orders = demo_orders(pool, self.prompt_layout, whole_pool(claims))
        prompts = prompts_in_order(pool, self.label_style, orders)
        order = send_order(orders)
        logprobs = self.model_api.next_token_logprobs([prompts[i] for i in order])
        by_position = dict(zip(order, logprobs))
        scores = {c["uid"]: label_logodds(by_position[i], self.token_match) for i, c in enumerate(pool)}
        self._pool_memo.put(key, scores)
        self.pool_scores_computed += 1
        return scores

    def known_pool_scores(self, claims: Claims) -> dict[int, float]:
        """The pool's scores if already computed, else {}; never calls the model."""
        return self._pool_memo.get(assignment_key(labeled_pool(claims))) or {}

    def predict_score(self, example: dict[str, Any], claims: Claims) -> float:
        """The example's score with every other labeled claim as demonstrations."""
        if example["label"] is not None:
            # Exactly the prompt its pool score already used.
            return self.pool_scores(claims)[example["uid"]]
        pool = labeled_pool(claims)
        key = (example["uid"], assignment_key(pool))
        cached = self._single_memo.get_fresh(key)
        if cached is not None:
            return cached
        [logprobs] = self.model_api.next_token_logprobs([judge_prompt(example, self._demonstrations(pool, claims), self.label_style)])
        score = label_logodds(logprobs, self.token_match)
        self._single_memo.put(key, score)
        self.single_predictions_computed += 1
        return score

    def predict_unlabeled(self, claims: Claims) -> dict[int, float]:
        """Every unlabeled claim's score with all labeled claims as demonstrations, by uid: the prompts
        predict_score would send, those not already known going out in one batched call."""
        pool = labeled_pool(claims)
        assignment = assignment_key(pool)
        scores = self.known_predictions(claims)
        missing = [claims[uid] for uid in sorted(claims) if claims[uid]["label"] is None and uid not in scores]
        if not missing:
            return scores
        demonstrations = self._demonstrations(pool, claims)
        answers = self.model_api.next_token_logprobs([judge_prompt(c, demonstrations, self.label_style) for c in missing])
        for claim, logprobs in zip(missing, answers):
            scores[claim["uid"]] = label_logodds(logprobs, self.token_match)
            self._single_memo.put((claim["uid"], assignment), scores[claim["uid"]])
        self.batch_predictions_computed += 1
        return scores

    def known_predictions(self, claims: Claims) -> dict[int, float]:
        """The unlabeled claims' predictions under this labelling that are already computed; never calls the model."""
        assignment = assignment_key(labeled_pool(claims))
        known = {uid: self._single_memo.get((uid, assignment)) for uid in claims if claims[uid]["label"] is None}
        return {uid: score for uid, score in known.items() if score is not None}

    def _demonstrations(self, pool: list[dict[str, Any]], claims: Claims) -> list[dict[str, Any]]:
        """The labeled claims in the order a claim outside them is judged from (see prompts.full_demo_order)."""
        orders = demo_orders(pool, self.prompt_layout, whole_pool(claims))
        return [pool[i] for i in full_demo_order(orders)]

    def evaluate(self, claims: Claims) -> dict:
        """The search metric (train_prob, inconsistent_num, ...) of a labelling."""
        return labelling_metric(claims, self.pool_scores(claims), self.mp_reduce)


def labelling_metric(claims: Claims, scores: Mapping[int, float], mp_reduce: str = "mean") -> dict:
    """The search metric of a labelling given each labeled claim's leave-one-out score."""
    pool = {c["uid"]: {**c, "score": scores[c["uid"]]} for c in labeled_pool(claims)}
    return calculate_accuracy(pool, pick_two_inconsistent_claims(pool), mp_reduce)
