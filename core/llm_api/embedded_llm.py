"""The embedded route: llama.cpp's own server (xllamacpp) driven in-process, no HTTP.

A whole batch goes to one ``handle_completions`` call; llama.cpp spreads it over its slots with continuous
batching and reuses cached prompt prefixes unless ``deterministic`` is set.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from typing import Optional, Sequence

from tqdm import tqdm

from core.crash_points import maybe_crash
from core.llm_api.base_llm import RouteStats, ScoringRoute
from core.llm_api.completions_request import CompletionRequest
from core.llm_api.engine_metrics import parse_metrics, prompt_token_counters
from core.llm_api.faults import PromptTooLong, ServerFault
from core.llm_api.logprobs import MalformedResponse, NextTokenLogprobs, parse_completion_logprobs
from core.llm_api.route_settings import EmbeddedRouteSettings
from core.process_exit import keep_until_done

# Batches that take longer than this get a token-progress bar.
PROGRESS_DELAY_SECONDS = 3.0


class EmbeddedLlamaCpp(ScoringRoute):
    name = "embedded"

    def __init__(self, settings: EmbeddedRouteSettings) -> None:
        """Loads the model (no network I/O: llama.cpp runs in this process)."""
        import xllamacpp  # imported here so that the HTTP routes never need the wheel

        model_path, slots, ctx_per_slot = settings.model_path, settings.slots, settings.ctx_per_slot
        self.model = model_path.stem
        self.model_path = model_path
        self.top_k = settings.top_k
        self.deterministic = settings.deterministic
        self.show_progress = settings.show_progress
        self.stats = RouteStats()

        params = xllamacpp.CommonParams()
        params.model.path = str(model_path)
        params.n_parallel = slots
        params.n_ctx = ctx_per_slot * slots  # llama.cpp splits n_ctx evenly over the slots
        n_threads = settings.threads or os.cpu_count() or 1
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.cache_ram_mib = settings.cache_ram_mib
        params.endpoint_metrics = True
        params.warmup = False
        params.verbosity = -1  # llama.cpp otherwise logs every slot's timings to stderr
        self.ctx_per_slot = ctx_per_slot
        self.context_tokens = ctx_per_slot
        self._server = xllamacpp.Server(params)
        self._batch_done: Optional[threading.Event] = None  # set when the last batch sent has ended
        self.one_prompt_per_request = False  # the reference code's pattern, for benchmarks

    def send_prompts_singly(self) -> None:
        self.one_prompt_per_request = True

    def prompt_tokens_so_far(self) -> tuple[float, float]:
        """(prompt tokens given to llama.cpp, of which served from its cache) since it started."""
        return prompt_token_counters(parse_metrics(self._server.handle_metrics())) or (0.0, 0.0)

    def next_token_logprobs(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        if not prompts:
            return []
        if self.one_prompt_per_request and len(prompts) > 1:
            return [self.next_token_logprobs([prompt])[0] for prompt in prompts]
        request = CompletionRequest(None, self.top_k, cache_prompt=not self.deterministic).body(prompts)
        sent_before, cached_before = self.prompt_tokens_so_far()
        started = time.perf_counter()
        response = self._call_with_progress(request)
        sent_after, cached_after = self.prompt_tokens_so_far()

        self.stats.requests += 1
        self.stats.prompts += len(prompts)
        self.stats.prompt_tokens += int(sent_after - sent_before)
        self.stats.computed_tokens += int((sent_after - sent_before) - (cached_after - cached_before))
        self.stats.engine_seconds += time.perf_counter() - started

        error = response.get("error") if isinstance(response, dict) else None
        if isinstance(error, dict) and error.get("type") == "exceed_context_size_error":
            raise PromptTooLong(
                f"a prompt of {error.get('n_prompt_tokens')} tokens does not fit the embedded model's "
                f"{error.get('n_ctx', self.ctx_per_slot)}-token context",
                "or raise EMBEDDED_CTX_PER_SLOT if the model was trained on a longer context")
        try:
            return parse_completion_logprobs(response, len(prompts))
        except MalformedResponse as exc:
            raise ServerFault(f"embedded llama.cpp: {exc}", exc.fault) from None

    def _call_with_progress(self, request: dict) -> dict:
        """Run the blocking call in a worker thread and show prompt tokens done while it runs."""
        result: dict = {}
        done = threading.Event()

        def call() -> None:
            try:
                result["response"] = self._server.handle_completions(request)
            except BaseException as exc:  # re-raised in the caller's thread
                result["exception"] = exc
            finally:
                done.set()

        # The batch's end is this Event, never the thread's own state: on Python 3.11 a Ctrl-C that interrupts
        # Thread.join() marks a thread that is still running as stopped (CPython gh-90882), which made close()
        # free the model, and exit() tear down llama.cpp, while the batch was still computing (SIGSEGV).
        self._batch_done = done
        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        maybe_crash("batch")
        done.wait(PROGRESS_DELAY_SECONDS)
        if not done.is_set() and self.show_progress:
            start = self._tokens_seen()
            with tqdm(desc=f"scoring {len(request['prompt'])} prompts", unit="tok", leave=False) as bar:
                while not done.wait(0.5):
                    bar.update(self._tokens_seen() - start - bar.n)
        done.wait()
        if "exception" in result:
            raise result["exception"]
        return result["response"]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens, from llama.cpp's own /tokenize (loopback HTTP,
        since xllamacpp offers no direct call for it)."""
        url = f"{self._server.listening_address}/tokenize"
        tokens = []
        for text in texts:
            request = urllib.request.Request(url, data=json.dumps({"content": text}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                tokens.append(json.load(response)["tokens"])
        return tokens

    def _tokens_seen(self) -> int:
        return int(self.prompt_tokens_so_far()[0])

    def close(self) -> None:
        # A second Ctrl-C abandons a batch that llama.cpp goes on computing (nothing cancels it). Freeing the
        # server under it would crash the process: keep it until the batch ends (core/process_exit.py).
        if self._batch_done is not None and not self._batch_done.is_set():
            print("note: not waiting for the llama.cpp batch that was interrupted; it ends with the process",
                  file=sys.stderr)
            keep_until_done(self._server, self._batch_done)
        # Dropping the last reference stops llama.cpp's threads and frees the model.
        self._server = None  # type: ignore[assignment]
