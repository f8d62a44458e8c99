"""Measure a server's prefill rate with a short, bounded probe: a few prompts with tails of two known lengths, timed.

A pool score does not compute whole prompts one at a time: it sends its prompts in one request, the server's
prefix cache holds the shared demonstrations, and each prompt's uncached tail is computed behind them, deep in the
context, where every token attends to all the tokens before it. So the probe times the same shape: per repeat, a
fresh random prefix of ``prefix_tokens`` words is sent (untimed, so the server caches it: in each of its slots, on
llama.cpp), then one request of
``prompts_per_request`` prompts, each that prefix with its own short tail, and one with long tails, timed. With
``prefix_tokens`` 0 the prompts are fresh, whole (the cold-start shape). On SmolLM2-135M and 2 CPU cores, fresh
1,230-token prompts measured 351 tokens/s on the CPU vLLM where a 32-claim pool score ran at 291 (README,
"Planning a run"): the fresh shape times tokens at half the depth.

The server's /metrics counts what it computed (so a prefix it did not keep, or a partial block, is counted, not
assumed). The time of a request is modelled as

    seconds = latency + computed tokens / rate

and fitted on the medians of the short-tail and the long-tail requests: rate = (long tokens - short tokens) /
(long seconds - short seconds), latency = short seconds - short tokens / rate (at least 0). So what a request of
that many prompts costs beside its computed tokens (llama.cpp moving a cached prefix into each of its slots, say)
is latency, and what slows its tokens (llama.cpp's slots attending over one shared KV cache, say) is rate. The requests go through the
project's own vLLM client (core/llm_api/vllm_llm.py), with its timeout cut to the probe's, so every wait is
bounded: at most 1 + 3 × repeats requests (2 × repeats without a prefix), each within ``timeout_seconds``, and
Ctrl-C ends it (KeyboardInterrupt out of the client's event loop).

What it assumes: the run's requests look like the probe's. Probe at the run's depth and batch (the planner's
default: the prefix is the job's mean prompt less its mean computed tail, and the prompts per request are the
job's, at most run_plan.PROMPTS_PER_REQUEST_CAP). On SmolLM2 and 2 cores a single prompt behind a cached prefix matched
the CPU vLLM's pool scores but ran 22-29% fast on llama.cpp's 4 slots (README, "Planning a run").
"""
from __future__ import annotations

import dataclasses
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

from core.errors import UserError
from core.llm_api.base_llm import ScoringError
from core.llm_api.faults import PromptTooLong
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
    """The fitted rate (engine-computed prompt tokens per second) and latency (seconds per request of
    ``prompts_per_request`` prompts), with the medians they came from (a request's tokens as the server counted
    them)."""
    url: str
    model: str
    prefill_rate: float
    request_latency: float
    short_tokens: float
    short_seconds: float
    long_tokens: float
    long_seconds: float
    prefix_tokens: int  # the cached prefix's words before each timed tail (0: fresh prompts)
    tail_words: int  # the long tails' words (the short ones': SHORT_WORDS)
    prompts_per_request: int
    requests: int
    tokens_counted_by: str  # "/metrics" (computed tokens) or "/tokenize" (the prompt's length)


def probe_requests(prefix_tokens: int, repeats: int) -> int:
    """Requests a probe sends: the warm-up, then per repeat a short and a long one (and the prefix's, if any)."""
    return 1 + (3 if prefix_tokens else 2) * repeats


def random_prompt(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def probe_prefill(url: str, long_tokens: int, *, prefix_tokens: int = 0, prompts_per_request: int = 1,
                  repeats: int = 3, timeout_seconds: float = 120.0, model: Optional[str] = None, settings: Optional[Settings] = None,
                  clock: Callable[[], float] = time.perf_counter, seed: Optional[int] = None) -> ProbeResult:
    """Probe the OpenAI-compatible server at ``url`` (vLLM, or llama.cpp's server) and fit its prefill rate.

    ``long_tokens``: the long tail's target length in tokens (about a word each); ``prefix_tokens``: the cached
    prefix before each tail (0: fresh prompts); together capped by the server's context. ``prompts_per_request``:
    prompts in each timed request, each with its own tail. ``repeats``: requests of each tail length, after one
    untimed warm-up. ``seed``: the random words' (None, the default: fresh from the OS, so a second probe of the
    same server doesn't find the first one's prompts in its cache). Raises UserError (a ScoringError from the client, or a fit that makes
    no sense: timings that don't grow with length, no way to count the tokens)."""
    check_url("--probe", url, "on the command line")
    base = settings or Settings()
    # The run's client, bounded by the probe's own limits: a server that doesn't answer ends the probe.
    probe_settings = dataclasses.replace(base, vllm_base_url=url, llama_api_base=None, vllm_timeout_seconds=timeout_seconds,
                                         vllm_retry_seconds=min(base.vllm_retry_seconds, timeout_seconds), vllm_max_retries=2)
    try:
        return _probe(url, long_tokens, prefix_tokens, prompts_per_request, repeats, model, probe_settings, clock,
                      random.Random(seed))
    except PromptTooLong:
        raise UserError(f"the probe's prompts (a prefix of {prefix_tokens} words and tails of up to {long_tokens}) are "
                        f"longer than {url}'s context: lower --probe-prefix-tokens or --probe-tokens") from None
    except ScoringError as exc:
        # The client names the run's settings; the probe replaced them with its own flags.
        raise UserError(f"the probe of {url} failed: {exc} (for the probe, --probe-timeout sets the wait per request and "
                        "for its retries, not the VLLM_* settings; fewer --probe-prompts make each request shorter)") from None


def _probe(url: str, long_tokens: int, prefix_tokens: int, prompts_per_request: int, repeats: int,
           model: Optional[str], probe_settings: Settings, clock: Callable[[], float], rng: random.Random) -> ProbeResult:
    with ModelAPI(model, settings=probe_settings, use_vllm=True, show_progress=False, exact_label_logprobs=False) as api:
        if api.context_tokens:
            room = api.context_tokens - 16
            prefix_tokens = max(0, min(prefix_tokens, room - MIN_LONG_WORDS))
            long_tokens = min(long_tokens, room - prefix_tokens)
        long_words = max(MIN_LONG_WORDS, long_tokens)
        counted_by = "/metrics"

        def timed(prefix: str, words: int, first_words: list[str]) -> tuple[float, float]:
            nonlocal counted_by
            prompts = [prefix + first + " " + random_prompt(words - 1, rng) for first in first_words]
            before = api.refresh_stats().computed_tokens
            started = clock()
            api.next_token_logprobs(prompts)
            seconds = clock() - started
            computed = api.refresh_stats().computed_tokens - before
            if computed <= 0:  # no counters on this server: count the prompt itself (fresh words: nothing cached)
                if prefix:
                    raise UserError(f"{url} reports no prompt-token counters on /metrics, so the probe can't tell what "
                                    "it computed behind a cached prefix: pass --probe-prefix-tokens 0 (fresh prompts), "
                                    "or --prefill-rate")
                counted_by = "/tokenize"
                try:
                    computed = sum(map(len, api.tokenize(prompts)))
                except UserError:
                    raise UserError(f"{url} reports no prompt-token counters on /metrics and offers no /tokenize, so the "
                                    "probe can't count what it computed: pass --prefill-rate instead") from None
            return float(computed), seconds

        def first_words() -> tuple[list[str], list[str], list[str]]:
            # The warming, short and long requests' tails behind one prefix start with words of their own where the
            # list allows, so none finds another's start in the cache (the server counts what it computed anyway).
            m = prompts_per_request
            words = rng.sample(WORDS, 3 * m) if 3 * m <= len(WORDS) else [rng.choice(WORDS) for _ in range(3 * m)]
            return words[:m], words[m:2 * m], words[2 * m:]

        timed("", SHORT_WORDS, first_words()[0])  # warm-up: connections, the first request's set-up
        short, long = [], []
        for _ in range(repeats):
            # A fresh prefix each time, so no repeat finds another's tail in the cache.
            prefix = random_prompt(prefix_tokens, rng) + " " if prefix_tokens else ""
            warming, short_starts, long_starts = first_words()
            if prefix:
                # Untimed: puts the prefix in the server's cache, as many times as the request's prompts: llama.cpp
                # keeps a cache per slot, and a timed request that first filled its slots would time that too.
                api.next_token_logprobs([prefix + word for word in warming])
            short.append(timed(prefix, SHORT_WORDS, short_starts))
            long.append(timed(prefix, long_words, long_starts))
        short_tokens, short_seconds = (statistics.median(x) for x in zip(*short))
        long_tokens_seen, long_seconds = (statistics.median(x) for x in zip(*long))
        if long_tokens_seen < prompts_per_request * long_words / 2:
            raise UserError(f"{url} computed {long_tokens_seen:.0f} tokens for {prompts_per_request} new tails of "
                            f"{long_words} words: it served most of them from its cache, so the probe timed no prefill; "
                            "probe again, or pass --prefill-rate")
        if long_seconds <= short_seconds or long_tokens_seen <= short_tokens:
            raise UserError(f"the probe of {url} did not take longer for {long_tokens_seen:.0f} tokens ({long_seconds:.3f} s) "
                            f"than for {short_tokens:.0f} ({short_seconds:.3f} s): the server is busy or the prompts too "
                            "short to time; raise --probe-tokens, or pass --prefill-rate")
        rate = (long_tokens_seen - short_tokens) / (long_seconds - short_seconds)
        return ProbeResult(url=api.describe().get("endpoint", url), model=api.model, prefill_rate=rate,
                           request_latency=max(0.0, short_seconds - short_tokens / rate), short_tokens=short_tokens,
                           short_seconds=short_seconds, long_tokens=long_tokens_seen, long_seconds=long_seconds,
                           prefix_tokens=prefix_tokens, tail_words=long_words, prompts_per_request=prompts_per_request,
                           requests=probe_requests(prefix_tokens, repeats), tokens_counted_by=counted_by)
