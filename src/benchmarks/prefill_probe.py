"""Measure a server's prefill rate with a short, bounded probe: a few prompts of two known lengths, timed.

Each prompt is fresh random words, so no prefix of it is in the server's cache (and the server's /metrics
confirms what it computed). The time of a request is modelled as

    seconds = latency + computed tokens / rate

and fitted on the medians of the short and the long prompts: rate = (long tokens - short tokens) / (long seconds
- short seconds), latency = short seconds - short tokens / rate (at least 0). The requests go through the
project's own vLLM client (core/llm_api/vllm_llm.py), with its timeout cut to the probe's, so every wait is
bounded: at most 1 + 2 × repeats requests, each within ``timeout_seconds``, and Ctrl-C ends it (KeyboardInterrupt
out of the client's event loop).

What it assumes: one prompt per request, as a pool score's longest prompts are computed; a batched request of
many prompts may reach a higher rate on a GPU, and a prompt much longer than the probe's a lower one (attention
grows with the context), so probe near the run's prompt length (the planner's default).
"""
from __future__ import annotations

import dataclasses
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

from core.errors import UserError
from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings, check_url

# Short common words: about one token each in most BPE vocabularies.
WORDS = ("the of and to in is was for on as with by at from that this are be or an it not but have had his her "
         "they which one you all were we when there can more if no out so said what up its about into than them "
         "only other new some could time these two may then do first any my now such like our over man me even "
         "most made after also did many before must through back years where much your way well down should "
         "because each just those people how too little state good very make world still own see men work long "
         "get here between both life being under never day same another know while last might us great old year "
         "off come since against go came right used take three").split()
SHORT_WORDS = 16
MIN_LONG_WORDS = 64


@dataclass(frozen=True)
class ProbeResult:
    """The fitted rate (engine-computed prompt tokens per second) and latency (seconds per request), with the
    medians they came from (tokens as the server counted them)."""
    url: str
    model: str
    prefill_rate: float
    request_latency: float
    short_tokens: float
    short_seconds: float
    long_tokens: float
    long_seconds: float
    requests: int
    tokens_counted_by: str  # "/metrics" (computed tokens) or "/tokenize" (the prompt's length)


def random_prompt(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def probe_prefill(url: str, long_tokens: int, *, repeats: int = 3, timeout_seconds: float = 120.0,
                  model: Optional[str] = None, settings: Optional[Settings] = None,
                  clock: Callable[[], float] = time.perf_counter, seed: int = 0) -> ProbeResult:
    """Probe the OpenAI-compatible server at ``url`` (vLLM, or llama.cpp's server) and fit its prefill rate.

    ``long_tokens``: the long prompts' target length (capped by the server's context); ``repeats``: prompts of
    each length, after one untimed warm-up. Raises UserError (a ScoringError from the client, or a fit that makes
    no sense: timings that don't grow with length, no way to count the tokens)."""
    check_url("--probe", url, "on the command line")
    base = settings or Settings()
    # The run's client, bounded by the probe's own limits: a server that doesn't answer ends the probe.
    probe_settings = dataclasses.replace(base, vllm_base_url=url, llama_api_base=None, vllm_timeout_seconds=timeout_seconds,
                                         vllm_retry_seconds=min(base.vllm_retry_seconds, timeout_seconds), vllm_max_retries=2)
    rng = random.Random(seed)
    with ModelAPI(model, settings=probe_settings, use_vllm=True, show_progress=False, exact_label_logprobs=False) as api:
        if api.context_tokens:
            long_tokens = min(long_tokens, api.context_tokens - 16)
        long_words = max(MIN_LONG_WORDS, long_tokens)
        counted_by = "/metrics"

        def timed(words: int) -> tuple[float, float]:
            nonlocal counted_by
            prompt = random_prompt(words, rng)
            before = api.refresh_stats().computed_tokens
            started = clock()
            api.next_token_logprobs([prompt])
            seconds = clock() - started
            computed = api.refresh_stats().computed_tokens - before
            if computed <= 0:  # no counters on this server: count the prompt itself (fresh words: nothing cached)
                counted_by = "/tokenize"
                try:
                    computed = len(api.tokenize([prompt])[0])
                except UserError:
                    raise UserError(f"{url} reports no prompt-token counters on /metrics and offers no /tokenize, so the "
                                    "probe can't count what it computed: pass --prefill-rate instead") from None
            return float(computed), seconds

        timed(SHORT_WORDS)  # warm-up: connections, the first request's set-up
        short, long = [], []
        for _ in range(repeats):
            short.append(timed(SHORT_WORDS))
            long.append(timed(long_words))
        short_tokens, short_seconds = (statistics.median(x) for x in zip(*short))
        long_tokens_seen, long_seconds = (statistics.median(x) for x in zip(*long))
        if long_seconds <= short_seconds or long_tokens_seen <= short_tokens:
            raise UserError(f"the probe of {url} did not take longer for {long_tokens_seen:.0f} tokens ({long_seconds:.3f} s) "
                            f"than for {short_tokens:.0f} ({short_seconds:.3f} s): the server is busy or the prompts too "
                            "short to time; raise --probe-tokens, or pass --prefill-rate")
        rate = (long_tokens_seen - short_tokens) / (long_seconds - short_seconds)
        return ProbeResult(url=api.describe().get("endpoint", url), model=api.model, prefill_rate=rate,
                           request_latency=max(0.0, short_seconds - short_tokens / rate), short_tokens=short_tokens,
                           short_seconds=short_seconds, long_tokens=long_tokens_seen, long_seconds=long_seconds,
                           requests=1 + 2 * repeats, tokens_counted_by=counted_by)
