"""Check that a vLLM (or llama.cpp) server is ready for ICM, one ✓/✗ line per check.

    python scripts/test_vllm_server.py                      # VLLM_BASE_URL from SECRETS or the environment
    python scripts/test_vllm_server.py --base-url http://127.0.0.1:8000 --model meta-llama/Llama-3.1-8B

Exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import urllib.error
import urllib.request
from typing import Any, Optional
from urllib.parse import urlsplit

from core.llm_api.engine_metrics import VLLM_HITS, VLLM_QUERIES, parse_metrics, prompt_token_counters
from core.llm_api.logprobs import MalformedResponse, parse_completion_logprobs
from core.llm_api.redaction import redact_url
from core.llm_api.settings import load_settings

TOP_K = 20
# About 350 tokens: several full cache blocks at vLLM's GPU block size (16) and at its CPU default (128).
CACHE_PROBE = "Question: Which planet is known as the red planet?\nClaim: Mars is known as the red planet.\n" * 16


class Check:
    def __init__(self) -> None:
        self.failed = 0

    def ok(self, what: str) -> None:
        print(f"✓ {what}")

    def fail(self, what: str, diagnosis: str) -> None:
        self.failed += 1
        print(f"✗ {what}\n    {diagnosis}")


class Server:
    def __init__(self, base_url: str, api_key: Optional[str], timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self.timeout = timeout

    def call(self, path: str, body: Optional[dict] = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            text, status = exc.read().decode(errors="replace"), exc.code
        try:
            return status, json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return status, text

    def complete(self, prompt: Any, model: str, logprobs: int = TOP_K) -> tuple[int, Any]:
        return self.call("/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 1,
                                             "temperature": 0, "logprobs": logprobs})


def connection_diagnosis(base_url: str, error: BaseException) -> str:
    parts = urlsplit(base_url)
    reason = getattr(error, "reason", error)
    if isinstance(reason, ConnectionRefusedError):
        return (f"nothing listens on {parts.hostname}:{parts.port}: start the server "
                "(scripts/launch_vllm_server.sh, or scripts/serve_local.py), or fix the port in VLLM_BASE_URL")
    if isinstance(reason, socket.gaierror):
        return f"the host name {parts.hostname!r} does not resolve: check VLLM_BASE_URL"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"{parts.hostname}:{parts.port} did not answer in time: is a firewall in the way, or the server still loading?"
    return f"{type(reason).__name__}: {reason}"


def error_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    return str(body)[:300]


def check_connection(server: Server, check: Check) -> bool:
    where = redact_url(server.base_url)
    try:
        status, _ = server.call("/health")
    except (urllib.error.URLError, OSError) as exc:
        check.fail(f"connect to {where}", connection_diagnosis(server.base_url, exc))
        return False
    if status == 200:
        check.ok(f"connect to {where}: /health answers 200")
    else:
        check.fail(f"connect to {where}", f"/health answered {status}: the engine is still loading or has died "
                   "(503), or another service holds this port")
    return True


def check_model(server: Server, wanted_model: Optional[str], check: Check) -> Optional[str]:
    """The model to use, or None when the server serves none that fits."""
    status, body = server.call("/v1/models")
    served = [m.get("id") for m in body.get("data", [])] if status == 200 and isinstance(body, dict) else []
    if status == 401:
        check.fail("list models", "401: the server wants an API key; set VLLM_API_KEY to the one it was started with")
        return None
    if not served:
        check.fail("list models", f"/v1/models answered {status} with no models: {error_text(body)}; "
                   "is this an OpenAI-compatible server, and is the URL its root (no /v1 at the end)?")
        return None
    if wanted_model and wanted_model not in served:
        check.fail(f"model {wanted_model!r} is served", f"model name mismatch: the server serves {', '.join(served)}; "
                   "pass one of those as --model, or relaunch the server with the model you want")
        return None
    model = wanted_model or served[0]
    check.ok(f"model {model!r} is served")
    return model


def check_completion(server: Server, model: str, check: Check) -> bool:
    status, body = server.complete("The capital of France is", model, logprobs=0)
    if status == 200 and isinstance(body, dict) and body.get("choices"):
        check.ok(f"basic completion: {body['choices'][0].get('text')!r}")
        return True
    check.fail("basic completion", f"/v1/completions answered {status}: {error_text(body)}")
    return False


def check_logprobs(server: Server, model: str, check: Check) -> None:
    what = f"{TOP_K} next-token logprobs"
    status, body = server.complete("The capital of France is", model)
    if status == 400 and "max allowed" in error_text(body).lower():
        check.fail(what, f"max-logprobs too low: {error_text(body)}; relaunch vLLM with --max-logprobs {TOP_K}")
        return
    if status != 200:
        check.fail(what, f"/v1/completions answered {status}: {error_text(body)}")
        return
    try:
        [top] = parse_completion_logprobs(body, 1)
    except MalformedResponse as exc:
        check.fail(what, f"no logprobs in the answer ({exc}): the server ignores the logprobs field")
        return
    if len(top) >= TOP_K:
        check.ok(f"{what} (got {len(top)})")
    else:
        check.fail(what, f"only {len(top)} came back: raise the server's --max-logprobs to {TOP_K}")


def check_list_prompts(server: Server, model: str, check: Check) -> None:
    prompts = ["The capital of France is", "1, 2, 3, 4,"]
    status, body = server.complete(prompts, model, logprobs=5)
    singles = [server.complete(p, model, logprobs=5) for p in prompts]
    if status != 200:
        check.fail("a two-prompt list", f"answered {status}: {error_text(body)}; this server does not take list prompts, "
                   "so every prompt would need its own request (the client falls back to that, slowly)")
        return
    try:
        batched = parse_completion_logprobs(body, 2)
        alone = [parse_completion_logprobs(b, 1)[0] for _, b in singles]
    except MalformedResponse as exc:
        check.fail("a two-prompt list", str(exc))
        return
    if [b[0][0] for b in batched] == [a[0][0] for a in alone]:
        check.ok("a two-prompt list comes back matched to its prompts by index")
    else:
        check.fail("a two-prompt list", "the choices do not match their prompts by index")


def check_prefix_cache(server: Server, model: str, check: Check) -> None:
    status, text = server.call("/metrics")
    counters = prompt_token_counters(parse_metrics(text)) if status == 200 and isinstance(text, str) else None
    if counters is None:
        check.fail("prefix caching", f"/metrics answered {status} without prompt-cache counters ({VLLM_QUERIES}, "
                   f"{VLLM_HITS} or llama.cpp's): start llama.cpp with metrics on, or use vLLM's default /metrics")
        return
    server.complete(CACHE_PROBE, model, logprobs=1)
    _, before = server.call("/metrics")
    server.complete(CACHE_PROBE + "Question:", model, logprobs=1)
    _, after = server.call("/metrics")
    hits = prompt_token_counters(parse_metrics(after))[1] - prompt_token_counters(parse_metrics(before))[1]
    if hits > 0:
        check.ok(f"prefix caching: a repeated prefix was served from the cache ({hits:.0f} tokens)")
    else:
        check.fail("prefix caching", "a repeated prefix was recomputed: launch vLLM with --enable-prefix-caching "
                   "(scripts/launch_vllm_server.sh does)")


def run_checks(server: Server, wanted_model: Optional[str]) -> Check:
    check = Check()
    if not check_connection(server, check):
        return check
    model = check_model(server, wanted_model, check)
    if model is None or not check_completion(server, model, check):
        return check
    check_logprobs(server, model, check)
    check_list_prompts(server, model, check)
    check_prefix_cache(server, model, check)
    return check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=None, help="server root (default: VLLM_BASE_URL)")
    parser.add_argument("--model", default=None, help="the model you will pass to ICM.py")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    settings = load_settings()
    base_url = args.base_url or settings.vllm_base_url
    if not base_url:
        print("✗ no server to check: pass --base-url or set VLLM_BASE_URL")
        return 1
    check = run_checks(Server(base_url, settings.vllm_api_key, args.timeout), args.model)
    print("all checks passed" if not check.failed else f"{check.failed} check(s) failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
