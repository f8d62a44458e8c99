"""Assemble the scoring side of a run: one ModelAPI for the whole run, and the pool scorer on top of it.

Rate limits are set here, and only for the hosted-API route. vLLM and the embedded model are ours to load,
so they are never throttled.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from core.llm_api.llm import ModelAPI, choose_route
from core.llm_api.rate_limits import RateLimiter
from core.llm_api.settings import Settings
from src.pipeline.label_scores import LabelAbsent, TokenMatch, holds_a_label
from src.prompts.prompts import LabelStyle, PromptLayout, query_text
from src.data.testbeds import DataError
from src.pipeline.pool_scoring import PoolScorer


def show_progress_bars(no_progress: bool) -> bool:
    """Progress bars only where someone watches them: a bar's carriage returns and escape codes would fill a
    log file or a cluster job's output."""
    return not no_progress and sys.stderr.isatty()


@dataclass(frozen=True)
class ScoringOptions:
    model: Optional[str] = None
    use_vllm: Optional[bool] = None
    deterministic: bool = False
    exact_label_logprobs: bool = True
    show_progress: bool = True
    label_style: LabelStyle = "space-in-label"
    token_match: TokenMatch = "whole"
    prompt_layout: PromptLayout = "reference"
    label_absent: LabelAbsent = "stop"  # an answer with no label token: stop, or the reference's floor
    external_top_k: Optional[int] = None  # override API_TOP_K (paper mode asks for the reference's 20)
    requests_per_minute: Optional[float] = None  # override API_REQUESTS_PER_MINUTE
    tokens_per_minute: Optional[float] = None  # override API_TOKENS_PER_MINUTE
    cache_dir: Optional[Path] = None  # where responses.sqlite lives; None: no response cache


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
        self.route = choose_route(settings, options.use_vllm)
        self.rate_limiter: Optional[RateLimiter] = None
        if self.route == "external":
            self.rate_limiter = RateLimiter(
                options.requests_per_minute or settings.api_requests_per_minute,
                options.tokens_per_minute or settings.api_tokens_per_minute,
                settings.api_retry_seconds,
            )
        if options.external_top_k is not None and options.external_top_k != settings.api_top_k:
            settings = replace(settings, api_top_k=options.external_top_k)
        self.model_api = ModelAPI(
            options.model, deterministic=options.deterministic, settings=settings,
            show_progress=options.show_progress, exact_label_logprobs=options.exact_label_logprobs,
            use_vllm=options.use_vllm, rate_limiter=self.rate_limiter, cache_dir=options.cache_dir,
            worth_caching=holds_a_label(options.token_match),
        )
        self.scorer = PoolScorer(
            self.model_api, options.label_style, options.token_match, prompt_layout=options.prompt_layout,
            label_absent=options.label_absent,
        )

    def close(self) -> None:
        self.model_api.close()

    def __enter__(self) -> "ScoringPipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
