"""Check that a vLLM (or llama.cpp) server is ready for ICM, one ✓/✗ line per check.

    python scripts/test_vllm_server.py                      # VLLM_BASE_URL from SECRETS or the environment
    python scripts/test_vllm_server.py --base-url http://127.0.0.1:8000 --model meta-llama/Llama-3.1-8B

Each ✗ line gives the diagnosis: what the server does wrong and what to change. A ⚠ line is worth knowing but
changes no exit code. Exits 1 if any check fails, 2 (with one `error:` line) if the URL or settings can't be used
at all.

The last check is a prefix-cache self-test: a dozen ICM-shaped prompts scored cold, then twice from the prefix
cache, then with exact label logprobs where the server offers them. It reports the largest drift of the label
log-odds and the labels that drift can flip; above src/pipeline/score_drift.py's tolerance it warns (⚠), and fails
(✗) when the drift reaches a label of its own scores. It takes seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import math
import secrets
import socket
import sys
import urllib.error
import urllib.request
from typing import Any, Optional, Sequence
from urllib.parse import unquote, urlsplit

from core.llm_api.base_llm import ScoringError
from core.llm_api.completions_request import CompletionRequest
from core.llm_api.engine_metrics import VLLM_HITS, VLLM_QUERIES, parse_metrics, prompt_token_counters
from core.llm_api.logprobs import MIN_ENTRIES, MalformedResponse, parse_completion_logprobs
from core.llm_api.redaction import redact_url
from core.llm_api.server_probe import exact_label_tokens, server_version
from core.llm_api.settings import check_url, load_settings, split_url_list
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.data.claims import Claim
from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records
from src.pipeline.label_scores import label_evidence
from src.pipeline.score_drift import DRIFT_TOLERANCE_NATS, ScoreDrift, score_drift
from src.prompts.prompts import leave_one_out_prompts

TOP_K = 20
# A claim as ICM shows it, after two demonstrations in the default label style: a base model ready for ICM
# puts " True" and " False" among its top next tokens here.
CLAIM_PROMPT = (
    "Question: What is the capital of France?\nClaim: The capital of France is Paris.\nI think this claim is True\n\n"
    "Question: What is the capital of Spain?\nClaim: The capital of Spain is Lisbon.\nI think this claim is False\n\n"
    "Question: What is the capital of Italy?\nClaim: The capital of Italy is Rome.\nI think this claim is"
)
# What each answer-shape fault (core/llm_api/faults.py) means for the person running the server.
SHAPE_DIAGNOSES = {
    "token ids as keys": "the server names tokens by id (\"token_id:1234\"), so the label words can't be read: "
                         "restart it without --return-tokens-as-token-ids",
    "sentinel values": "the server writes its logprobs as -9999 (its stand-in for -inf) except the top one, so "
                       "there is nothing to compare: this server build's logprobs are broken (raising --max-logprobs "
                       "won't help); use another build or version",
    "not a log-probability": "the server's logprobs are not finite numbers <= 0 (a string, NaN, Infinity, a positive "
                             "value, or an entry with no token): its logprobs are broken; use another build or version",
    "logprobs in no known shape": "the logprobs are in neither vLLM's nor llama.cpp's shape: is this an OpenAI-compatible "
                                  "completions server?",
    "not an OpenAI completions body": "/v1/completions does not answer in the OpenAI format (no `choices`): an older "
                                      "llama.cpp server answers in its own format; use a server with OpenAI-compatible "
                                      "/v1/completions",
    "no logprobs": "the answer holds no logprobs: the server ignores the logprobs field",
    "choice indices wrong": "the choices of a list don't match their prompts by index",
    "choice count wrong for one prompt": "one prompt was answered with no choice or several",
}


class Unreachable(Exception):
    """The server could not be asked: the message is the diagnosis."""
# About 350 tokens: several full cache blocks at vLLM's GPU block size (16) and at its CPU default (128).
CACHE_PROBE = "Question: Which planet is known as the red planet?\nClaim: Mars is known as the red planet.\n" * 16


# The prefix-cache self-test scores the leave-one-out prompts of this many built-in demo claims (two groups):
# 260 tokens each, so two full 128-token blocks (vLLM's CPU default) or sixteen 16-token ones are cached.
DRIFT_TEST_CLAIMS = 8


class Check:
    def __init__(self) -> None:
        self.failed = 0
        self.warned = 0

    def ok(self, what: str) -> None:
        print(f"✓ {what}")

    def warn(self, what: str, advice: str) -> None:
        """Worth knowing, but no reason to refuse the server: the exit code stays 0."""
        self.warned += 1
        print(f"⚠ {what}\n    {advice}")

    def fail(self, what: str, diagnosis: str) -> None:
        self.failed += 1
        print(f"✗ {what}\n    {diagnosis}")


class Server:
    def __init__(self, base_url: str, api_key: Optional[str], timeout: float, url_from: str = "VLLM_BASE_URL") -> None:
        self.url_from = url_from  # where the URL was given: named in the advice
        parts = urlsplit(base_url)
        # urllib sends no user:password@ of a URL (it takes it for part of the host): send it as a header, as ICM does.
        self.base_url = redact_url(base_url).rstrip("/")
        if parts.username or parts.password:
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode()
        else:
            authorization = f"Bearer {api_key}" if api_key else None
        self.headers = {"Content-Type": "application/json", **({"Authorization": authorization} if authorization else {})}
        self.timeout = timeout

    def call(self, path: str, body: Optional[dict] = None) -> tuple[int, Any]:
        """(status, decoded JSON or text). Raises Unreachable with the diagnosis when no answer came back whole."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read().decode(errors="replace")
                status = response.status
        except urllib.error.HTTPError as exc:
            try:
                text, status = exc.read().decode(errors="replace"), exc.code
            except (OSError, http.client.HTTPException):
                text, status = "", exc.code
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise Unreachable(connection_diagnosis(self.base_url, exc, self.url_from)) from None
        try:
            return status, json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return status, text

    def complete(self, prompt: Any, model: str, logprobs: int = TOP_K) -> tuple[int, Any]:
        return self.call("/v1/completions", CompletionRequest(model, logprobs).body(prompt))


def connection_diagnosis(base_url: str, error: BaseException, url_from: str = "VLLM_BASE_URL") -> str:
    parts = urlsplit(base_url)
    reason = getattr(error, "reason", error)
    if isinstance(reason, ConnectionRefusedError):
        return (f"nothing listens on {parts.hostname}:{parts.port}: start the server "
                f"(scripts/launch_vllm_server.sh, or scripts/serve_local.py), or fix the port in {url_from}")
    if isinstance(reason, socket.gaierror):
        return f"the host name {parts.hostname!r} does not resolve: check {url_from}"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"{parts.hostname}:{parts.port} did not answer in time: is a firewall in the way, or the server still loading?"
    if "SSL" in type(reason).__name__ or "ssl" in str(reason).lower():
        return f"the TLS handshake with {parts.hostname}:{parts.port} failed ({reason}): if the server speaks plain HTTP, use http://"
    if isinstance(reason, (http.client.HTTPException, ConnectionResetError)):
        return f"the connection was dropped before a whole answer came back ({type(reason).__name__}): a proxy or the server failed mid-answer"
    return f"{type(reason).__name__}: {reason}"


def error_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    return str(body)[:300]


def check_connection(server: Server, check: Check) -> bool:
    where = redact_url(server.base_url)
    try:
        status, _ = server.call("/health")
    except Unreachable as exc:
        check.fail(f"connect to {where}", str(exc))
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
    listed = body.get("data") if status == 200 and isinstance(body, dict) else None
    served = [m.get("id") for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
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
    if status == 200 and isinstance(body, dict) and isinstance(body.get("choices"), list) and body["choices"] \
            and isinstance(body["choices"][0], dict):
        check.ok(f"basic completion: {body['choices'][0].get('text')!r}")
        return True
    if status == 200:
        check.fail("basic completion", f"{SHAPE_DIAGNOSES['not an OpenAI completions body']} (it answered {str(body)[:80]!r})")
        return False
    check.fail("basic completion", f"/v1/completions answered {status}: {error_text(body)}")
    return False


def parsed_or_diagnosis(body: Any, n: int) -> tuple[Optional[list], Optional[str]]:
    """The checked logprobs of an answer, or the diagnosis of what is wrong with them."""
    try:
        return parse_completion_logprobs(body, n), None
    except MalformedResponse as exc:
        return None, f"{SHAPE_DIAGNOSES.get(exc.fault, 'the answer is unusable')} ({exc})"


def check_logprobs(server: Server, model: str, check: Check) -> None:
    what = f"{TOP_K} next-token logprobs"
    status, body = server.complete("The capital of France is", model)
    if status == 400 and "max allowed" in error_text(body).lower():
        check.fail(what, f"max-logprobs too low: {error_text(body)}; relaunch vLLM with --max-logprobs {TOP_K}")
        return
    if status != 200:
        check.fail(what, f"/v1/completions answered {status}: {error_text(body)}")
        return
    answers, diagnosis = parsed_or_diagnosis(body, 1)
    if diagnosis:
        check.fail(what, diagnosis)
    elif len(answers[0]) >= TOP_K:
        check.ok(f"{what} (got {len(answers[0])})")
    else:
        check.fail(what, f"only {len(answers[0])} came back: raise the server's --max-logprobs to {TOP_K}")


def check_label_tokens(server: Server, model: str, check: Check) -> None:
    """On a claim prompt as ICM builds it, " True" and " False" must both be among the top next tokens."""
    what = "' True' and ' False' among the top next tokens of a claim prompt"
    status, body = server.complete(CLAIM_PROMPT, model)
    if status != 200:
        check.fail(what, f"/v1/completions answered {status}: {error_text(body)}")
        return
    answers, diagnosis = parsed_or_diagnosis(body, 1)
    if diagnosis:
        check.fail(what, diagnosis)
        return
    found = {token: logprob for token, logprob in answers[0] if token in (" True", " False")}
    top = ", ".join(f"{t!r} {lp:.2f}" for t, lp in sorted(answers[0], key=lambda e: -e[1])[:5])
    if len(found) == 2:
        mass = sum(math.exp(lp) for lp in found.values())
        check.ok(f"{what} (' True' {found[' True']:.2f}, ' False' {found[' False']:.2f}; {100 * mass:.0f}% of the probability)")
    else:
        missing = " and ".join(repr(t) for t in (" True", " False") if t not in found)
        check.fail(what, f"{missing} not among them (the top: {top}): the model does not answer a claim with a label. Is it "
                   "a base model (not an instruct/chat one)? Does its tokenizer make ' True' one token?")


def check_list_prompts(server: Server, model: str, check: Check) -> None:
    prompts = ["The capital of France is", "1, 2, 3, 4,"]
    status, body = server.complete(prompts, model, logprobs=5)
    singles = [server.complete(p, model, logprobs=5) for p in prompts]
    if status != 200:
        check.fail("a two-prompt list", f"answered {status}: {error_text(body)}; this server does not take list prompts, "
                   "so every prompt would need its own request (the client falls back to that, slowly)")
        return
    batched, diagnosis = parsed_or_diagnosis(body, 2)
    alone = [parsed_or_diagnosis(b, 1)[0] for _, b in singles]
    if diagnosis or None in alone:
        check.fail("a two-prompt list", f"{diagnosis or 'a single prompt was not answered properly'}; the client falls back "
                   "to one prompt per request")
        return
    alone = [a[0] for a in alone]
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


class DriftTestFailed(Exception):
    """The prefix-cache self-test could not score its prompts: the message is the diagnosis."""


def drift_test_prompts() -> tuple[list[str], list[str]]:
    """(prompts, their neighbours): the leave-one-out prompts of DRIFT_TEST_CLAIMS built-in demo claims (their gold
    labels as the labels), as ICM builds them by default (tree layout, space-in-label style), each after a nonce of
    its own; and the same for the labelling with the middle claim's label flipped, what the engine saw one search
    step before. A neighbour shares its prompt's prefix up to the flipped demonstration, then differs.

    The nonces are fresh each run and differ between prompts, so no block of a prompt is in a prefix cache when it
    is first sent (vLLM keys a block by a hash chained from the first token), not even one it shares with another
    prompt of the same request. vLLM's /reset_prefix_cache would also empty the cache, but it exists only in its
    dev mode (VLLM_SERVER_DEV_MODE=1)."""
    records = normalise_records(demo_records()[:DRIFT_TEST_CLAIMS], TESTBED_SPECS["demo"], "demo", True)
    pool = [Claim.from_record(record, uid, record["label"]) for uid, record in enumerate(records)]
    neighbour = list(pool)
    neighbour[len(pool) // 2] = pool[len(pool) // 2].relabelled(pool[len(pool) // 2].label ^ 1)
    run = secrets.token_hex(4)
    nonces = [f"Probe {run}-{i}.\n\n" for i in range(len(pool))]
    return tuple([nonce + prompt for nonce, prompt in zip(nonces, leave_one_out_prompts(claims, "space-in-label", "tree"))]
                 for claims in (pool, neighbour))


def label_scores(server: Server, prompts: list[str], request: CompletionRequest,
                 label_tokens: Optional[dict[int, str]] = None) -> list[float]:
    """The label log-odds (nats) of each prompt from one list request, read as ICM reads them. ``label_tokens``:
    the {id: text} the request asks exact logprobs for, each of which every answer must hold."""
    status, body = server.call("/v1/completions", request.body(prompts))
    if status != 200:
        raise DriftTestFailed(f"/v1/completions answered {status}: {error_text(body)}")
    try:
        answers = parse_completion_logprobs(body, len(prompts), min_entries=0 if label_tokens else MIN_ENTRIES)
    except MalformedResponse as exc:
        raise DriftTestFailed(f"{SHAPE_DIAGNOSES.get(exc.fault, 'the answer is unusable')} ({exc})") from None
    for answer in answers if label_tokens else ():
        missing = set(label_tokens.values()) - {token for token, _ in answer}
        if missing:
            raise DriftTestFailed(f"asked for the exact logprobs of the label tokens, an answer lacks {sorted(missing)}: "
                                  "the server does not honour logprob_token_ids on a list; run ICM with --label-logprobs topk")
    return [label_evidence(answer, "whole").logodds for answer in answers]


def exact_label_token_ids(server: Server, model: str) -> Optional[dict[int, str]]:
    """The label tokens' {id: text} if the server gives exact logprobs for them, found as ICM's vLLM route finds it
    (core/llm_api/server_probe.py); None on a server without /version (llama.cpp) or without the feature."""
    async def fetch(method: str, path: str, body: Optional[dict], timeout: float) -> Any:
        status, answer = server.call(path, body)  # bounded by --timeout
        if status != 200:
            raise ScoringError(f"{path} answered {status}")
        return answer

    async def probe() -> Optional[dict[int, str]]:
        return await exact_label_tokens(fetch, model) if await server_version(fetch, server.base_url) else None

    return asyncio.run(probe())


def cache_counters(server: Server) -> Optional[tuple[float, float]]:
    """(prompt tokens given to the engine, of which served from its prefix cache) from /metrics, or None."""
    status, text = server.call("/metrics")
    return prompt_token_counters(parse_metrics(text)) if status == 200 and isinstance(text, str) else None


def cache_share(before: Optional[tuple[float, float]], after: Optional[tuple[float, float]]) -> str:
    """The share of the prompt tokens between two /metrics readings that came from the prefix cache, as text."""
    if before is None or after is None or after[0] <= before[0]:
        return "unknown (no prompt-token counters in /metrics)"
    return f"{100 * (after[1] - before[1]) / (after[0] - before[0]):.0f}%"


def drift_figures(drift: ScoreDrift) -> str:
    return (f"at most {drift.largest:.2g} nats over {drift.scored} claim prompts (tolerance {DRIFT_TOLERANCE_NATS}); "
            f"{drift.could_flip} lie within that of 0 and could flip, {drift.flipped} flipped")


def report_drift(check: Check, what: str, drift: ScoreDrift, why: str, detail: str = "") -> None:
    """One ✓, ⚠ or ✗ line for a drift (src/pipeline/score_drift.py decides which). ``why``: what moves the scores
    and what to do about it; ``detail``: added to the figures."""
    verdict = drift.verdict()
    what = f"{what}: {drift_figures(drift)}{detail}"
    if verdict == "pass":
        check.ok(what)
    elif verdict == "warn":
        check.warn(what, f"{why}. In a run, every label whose score lies within the drift of 0 can come out either way "
                         f"({drift.could_flip} of these {drift.scored} do).")
    else:
        check.fail(what, f"{why}. The drift reaches at least half of these labels: they say as much about the cache as "
                         "about the model.")


def check_score_drift(server: Server, model: str, check: Check) -> None:
    """The prefix-cache self-test: the same ICM-shaped prompts scored cold, then after a search step's neighbouring
    prompts (their prefixes cached), then again (the whole prompts cached); and, where the server offers exact label logprobs, scored both ways. Reports the largest drift of the label
    log-odds and the labels it can flip."""
    label_tokens = exact_label_token_ids(server, model)
    prompts, neighbours = drift_test_prompts()
    top_k = CompletionRequest(model, TOP_K, cache_prompt=False)
    try:
        before_cold = cache_counters(server)
        cold = label_scores(server, prompts, top_k)  # cache_prompt: false keeps llama.cpp from reusing a slot's prefix
        after_cold = cache_counters(server)
        label_scores(server, neighbours, CompletionRequest(model, TOP_K, cache_prompt=True))
        before_cached = cache_counters(server)
        # First with the prefixes the neighbours left (on vLLM, which always caches, the whole prompts the cold pass
        # left), then with the prompts' own.
        cached = [label_scores(server, prompts, CompletionRequest(model, TOP_K, cache_prompt=True)) for _ in range(2)]
        after_cached = cache_counters(server)
        exact = (label_scores(server, prompts, CompletionRequest(model, TOP_K, tuple(label_tokens), cache_prompt=True),
                              label_tokens) if label_tokens else None)
    except DriftTestFailed as exc:
        check.fail("prefix-cache self-test", str(exc))
        return
    report_drift(check, "label log-odds cold vs from the prefix cache", score_drift(cold, *cached),
                 "the prefix cache moves this server's scores, so a run's scores depend on what its cache held. On llama.cpp, "
                 "ICM.py --deterministic sends cache_prompt: false (every prompt computed in full); on vLLM, compare with "
                 "a server started with --no-enable-prefix-caching",
                 f" (prompt tokens from the cache: cold {cache_share(before_cold, after_cold)}, "
                 f"cached {cache_share(before_cached, after_cached)})")
    if exact is None:
        check.ok(f"exact vs top-{TOP_K} label logprobs: this server offers no exact ones (logprob_token_ids), so ICM "
                 f"reads the top {TOP_K}: nothing to compare")
        return
    report_drift(check, f"label log-odds from exact vs top-{TOP_K} label logprobs", score_drift(exact, cached[-1]),
                 f"ICM reads the exact label logprobs here (--label-logprobs auto); a run with --label-logprobs topk or "
                 f"--paper-mode reads the top {TOP_K}, where a label outside them counts as the reference's floor, and "
                 "scores differently")


def run_checks(server: Server, wanted_model: Optional[str]) -> Check:
    check = Check()
    if not check_connection(server, check):
        return check
    try:
        model = check_model(server, wanted_model, check)
        if model is None or not check_completion(server, model, check):
            return check
    except Unreachable as exc:
        check.fail("list models and complete a prompt", str(exc))
        return check
    for step in (check_logprobs, check_label_tokens, check_list_prompts, check_prefix_cache, check_score_drift):
        if step is check_score_drift and check.failed:
            print("  (the prefix-cache self-test was not run: its scores mean nothing until the ✗ above are fixed)")
            break
        try:
            step(server, model, check)
        except Unreachable as exc:
            check.fail(step.__name__.replace("check_", "").replace("_", " "), str(exc))
    return check


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=None, help="server root (default: VLLM_BASE_URL; each of a comma-separated list)")
    parser.add_argument("--model", default=None, help="the model you will pass to ICM.py")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per request (above 0)")
    return parser


def check_servers(args: argparse.Namespace) -> int:
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise UserError(f"--timeout {args.timeout} must be a positive number of seconds")
    settings = load_settings()
    url_from = "--base-url" if args.base_url else "VLLM_BASE_URL"
    urls = split_url_list(args.base_url or settings.vllm_base_url or "")
    if not urls:
        raise UserError("no server to check: pass --base-url or set VLLM_BASE_URL")
    for url in urls:
        check_url(url_from, url, "given")
    failed = warned = 0
    for url in urls:
        if len(urls) > 1:
            print(f"-- {redact_url(url)}")
        check = run_checks(Server(url, settings.vllm_api_key, args.timeout, url_from), args.model)
        failed, warned = failed + check.failed, warned + check.warned
    warnings = f" ({warned} warning(s))" if warned else ""
    print(f"all checks passed{warnings}" if not failed else f"{failed} check(s) failed{warnings}")
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(lambda: check_servers(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
