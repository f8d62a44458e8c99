"""Assemble the scoring side of a run: one ModelAPI for the whole run, and the pool scorer on top of it.

The route, and its rate limits (the hosted-API route's only: vLLM and the embedded model are ours to load, so
they are never throttled), are chosen and built in core/llm_api/routes.py.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.config.run_config import PromptConfig, RouteConfig
from src.pipeline.label_scores import holds_a_label
from src.prompts.prompts import LabelStyle, query_text
from src.data.testbeds import DataError
from src.pipeline.pool_scoring import PoolScorer


def show_progress_bars(no_progress: bool) -> bool:
    """Progress bars only where someone watches them: a bar's carriage returns and escape codes would fill a
    log file or a cluster job's output."""
    return not no_progress and sys.stderr.isatty()


@dataclass(frozen=True)
class ScoringOptions:
    """What the scoring side takes of a run's configuration: its route and prompt sections, and what this
    invocation resolved (progress bars shown, the response cache's folder, the hosted API's top-k). The
    settings' defaults are the config's (src/config/run_config.py); the properties only read them through."""
    route: RouteConfig
    prompts: PromptConfig
    show_progress: bool
    cache_dir: Optional[Path]  # where responses.sqlite lives; None: no response cache
    external_top_k: Optional[int] = None  # override API_TOP_K (paper mode asks for the reference's 20)

    model = property(lambda self: self.route.model)
    use_vllm = property(lambda self: self.route.use_vllm)
    deterministic = property(lambda self: self.route.deterministic)
    requests_per_minute = property(lambda self: self.route.requests_per_minute)  # override API_REQUESTS_PER_MINUTE
    tokens_per_minute = property(lambda self: self.route.tokens_per_minute)  # override API_TOKENS_PER_MINUTE
    exact_label_logprobs = property(lambda self: self.prompts.exact_label_logprobs)
    label_style = property(lambda self: self.prompts.label_style)
    token_match = property(lambda self: self.prompts.token_match)


# A token covers at least one byte of UTF-8 in byte-level BPE (and SentencePiece with byte fallback), so a prompt
# of fewer bytes than the context, less this margin for special tokens, can't overflow it: only longer ones are tokenized.
SPECIAL_TOKENS_MARGIN = 8


def refuse_claims_longer_than_the_context(claims: Sequence[dict], model_api: ModelAPI, label_style: LabelStyle,
                                          source: str) -> None:
    """Refuse a claim that can't fit the model's context even alone, naming its record and token count: no pool
    size can cure that, so "lower --batch_size" would be advice that can't work. Routes that don't know their
    context (the hosted API) are not checked."""
    context = model_api.context_tokens
    if context is None:
        return
    suspects = [c for c in claims if len(query_text(c["prompt"], label_style).encode("utf-8")) + SPECIAL_TOKENS_MARGIN >= context]
    if not suspects:
        return
    for claim, tokens in zip(suspects, model_api.tokenize([query_text(c["prompt"], label_style) for c in suspects])):
        if len(tokens) + 1 > context:  # and one token for the label
            raise DataError(f"{source}, record {claim.get('record')}: its claim alone is {len(tokens):,} tokens, more than "
                            f"the model's {context:,}-token context, so no pool that holds it can be scored: shorten or drop "
                            "that record")


class ScoringPipeline:
    def __init__(self, options: ScoringOptions, settings: Settings) -> None:
        # Flags given override SECRETS and the environment; core chooses the route and builds it (and the rate
        # limiter, which only the hosted route has).
        settings = settings.overridden(api_top_k=options.external_top_k, api_requests_per_minute=options.requests_per_minute,
                                       api_tokens_per_minute=options.tokens_per_minute)
        self.model_api = ModelAPI(
            options.model, deterministic=options.deterministic, settings=settings,
            show_progress=options.show_progress, exact_label_logprobs=options.exact_label_logprobs,
            use_vllm=options.use_vllm, cache_dir=options.cache_dir,
            worth_caching=holds_a_label(options.token_match),
        )
        self.scorer = PoolScorer(self.model_api, options.prompts)

    def close(self) -> None:
        self.model_api.close()

    def __enter__(self) -> "ScoringPipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
