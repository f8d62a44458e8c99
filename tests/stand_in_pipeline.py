"""A stand-in for ICM.py's ScoringPipeline, so a whole run can go through ``ICM.main(argv)`` in-process in well
under a second: a deterministic route that reads the prompts the project builds, and no model.

    monkeypatch.setattr("src.experiments.ICM.ScoringPipeline", StandInPipeline)
"""
from __future__ import annotations

import hashlib
import math
from typing import ClassVar, Optional, Sequence

from core.llm_api.base_llm import RouteStats, ScoringError, ScoringRoute
from core.llm_api.llm import ModelAPI
from src.prompts.prompts import DEMO_SEPARATOR
from src.pipeline.pool_scoring import PoolScorer


class PromptHashRoute(ScoringRoute):
    """Each prompt's label log-odds: a prior drawn from a hash of the claim judged, nudged by the labels of its
    demonstrations. The same prompt always gets the same answer."""

    name = "stand-in"
    model = "prompt-hash"

    def __init__(self, fail_after: Optional[int] = None) -> None:
        self.stats = RouteStats()
        self.batches: list[list[str]] = []
        self.fail_after = fail_after  # requests answered before every further one fails
        self.attempts = 0

    def next_token_logprobs(self, prompts: Sequence[str]):
        self.attempts += 1
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise ScoringError("the stand-in server is down")
        self.batches.append(list(prompts))
        self.stats.requests += 1
        self.stats.prompts += len(prompts)
        return [self._answer(p) for p in prompts]

    @staticmethod
    def _answer(prompt: str):
        *demos, query = prompt.split(DEMO_SEPARATOR)
        prior = int(hashlib.sha256(query.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF * 2 - 1
        votes = sum(1 if d.endswith("True") else -1 for d in demos)
        logodds = prior + 0.5 * votes / max(1, len(demos))
        return [(" True", -math.log1p(math.exp(-logodds))), (" False", -math.log1p(math.exp(logodds))), (" maybe", -6.0)]


class StandInPipeline:
    """Built the way ICM.py builds a ScoringPipeline; remembers every instance and the options it was given."""

    instances: ClassVar[list["StandInPipeline"]] = []
    fail_after: Optional[int] = None  # set on the class to make the route fail after that many requests

    def __init__(self, options, settings) -> None:
        self.options = options
        self.route = "stand-in"
        self.stand_in = PromptHashRoute(self.fail_after)
        self.model_api = ModelAPI(settings=settings, route=self.stand_in)
        self.scorer = PoolScorer(self.model_api, options.label_style, options.token_match,
                                 prompt_layout=options.prompt_layout)
        StandInPipeline.instances.append(self)

    def close(self) -> None:
        self.model_api.close()

    def __enter__(self) -> "StandInPipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


HOST_SETTINGS = ("VLLM_BASE_URL", "LLAMA_API_BASE", "API_KEY", "VLLM_API_KEY")


def use_stand_in(monkeypatch, tmp_path, fail_after: Optional[int] = None) -> type[StandInPipeline]:
    """Route ICM.py's scoring to the stand-in, with no settings from the researcher's shell or SECRETS file."""
    for name in HOST_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ICM_SECRETS_FILE", str(tmp_path / "no-such-SECRETS"))
    monkeypatch.setattr(StandInPipeline, "instances", [])
    monkeypatch.setattr(StandInPipeline, "fail_after", fail_after)
    monkeypatch.setattr("src.experiments.ICM.ScoringPipeline", StandInPipeline)
    return StandInPipeline
