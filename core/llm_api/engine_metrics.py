"""Read prompt-token counters from a serving engine's Prometheus /metrics text (vLLM or llama.cpp)."""
from __future__ import annotations

import re
from typing import Optional

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+([0-9.eE+-]+|NaN|[+-]Inf)\s*$", re.MULTILINE)

VLLM_QUERIES = "vllm:prefix_cache_queries_total"
VLLM_HITS = "vllm:prefix_cache_hits_total"
LLAMACPP_COMPUTED = "llamacpp:prompt_tokens_total"
LLAMACPP_CACHED = "llamacpp:prompt_tokens_cached_total"


def parse_metrics(text: str) -> dict[str, float]:
    """{metric name: value}, summed over label sets (vLLM labels each sample by engine and model)."""
    totals: dict[str, float] = {}
    for name, value in _SAMPLE.findall(text):
        try:
            totals[name] = totals.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return totals


def prompt_token_counters(metrics: dict[str, float]) -> Optional[tuple[float, float]]:
    """(prompt tokens given to the engine, of which served from its prefix cache), or None if not reported."""
    if VLLM_QUERIES in metrics and VLLM_HITS in metrics:
        return metrics[VLLM_QUERIES], metrics[VLLM_HITS]
    if LLAMACPP_COMPUTED in metrics and LLAMACPP_CACHED in metrics:
        return metrics[LLAMACPP_COMPUTED] + metrics[LLAMACPP_CACHED], metrics[LLAMACPP_CACHED]
    return None
