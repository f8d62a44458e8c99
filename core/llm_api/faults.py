"""What a scoring server's fault means and what the client does about it: the one table, and its errors.

Every fault a route recognises names its row of FAULTS, and the row says what happens:
- ``transient``: asking again may cure it. Retried with capped, jittered backoff within the route's time
  budget (core/llm_api/retry_waits.py), with a note on stderr while waiting.
- ``permanent``: asking again cannot cure it. The run stops at once (exit 2) with the fix.
- ``server-shaped``: the server answers, but its answer can't be read as log-probabilities of the label
  tokens. The run stops at once naming the server fault, except where sending one prompt per request is a
  fallback that works; nothing unreadable ever becomes a score or a response-cache entry.
The README's "Faults and what the client does" table is this one; tests/test_fault_table.py checks that the
two agree and that every row's test exists.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from core.llm_api.base_llm import ScoringError

TRANSIENT, PERMANENT, SERVER_SHAPED = "transient", "permanent", "server-shaped"
KINDS = (TRANSIENT, PERMANENT, SERVER_SHAPED)


@dataclass(frozen=True)
class FaultRow:
    name: str
    kind: str  # TRANSIENT, PERMANENT or SERVER_SHAPED
    recognised_by: str
    action: str
    test: str  # "tests/file.py::test_name": the test that holds the row


FAULTS: tuple[FaultRow, ...] = (
    FaultRow("connection refused or dropped", TRANSIENT, "no connection, a reset, or a connection lost mid-answer",
             "retry within the time budget", "tests/test_faults.py::test_transient_faults_are_retried_and_the_answers_are_right"),
    FaultRow("timeout", TRANSIENT, "no answer within VLLM_TIMEOUT_SECONDS / API_TIMEOUT_SECONDS",
             "retry within the time budget", "tests/test_faults.py::test_transient_faults_are_retried_and_the_answers_are_right"),
    FaultRow("server error", TRANSIENT, "HTTP 5xx whose message names no permanent cause",
             "retry; after two HTTP 500s in a row, ask a one-line probe prompt and the request once more, then each prompt "
             "alone (see the rows `prompt the server can't answer` and `lists fail, single prompts work`)",
             "tests/test_faults.py::test_past_the_retry_bound_the_error_names_the_cause"),
    FaultRow("body cut short or not JSON", TRANSIENT, "HTTP 200 whose body is not JSON",
             "retry within the time budget", "tests/test_faults.py::test_transient_faults_are_retried_and_the_answers_are_right"),
    FaultRow("engine died behind an open connection", TRANSIENT, "/health fails twice while a request is outstanding",
             "give the request up and retry it", "tests/test_faults.py::test_a_dead_engine_behind_an_open_connection_is_noticed_by_health_polling"),
    FaultRow("rate limited", TRANSIENT, "HTTP 429, or a quota header whose remaining count is 0",
             "pause for the time Retry-After, retry-after-ms or x-ratelimit-reset-* gives (every form), announced; "
             "that time counts against the budget", "tests/test_rate_limit_headers.py::test_a_429_pause_is_announced_and_taken_from_the_header"),
    FaultRow("rate-limit wait past the budget", PERMANENT, "a Retry-After or reset header asks for more than the time budget left",
             "stop at once, saying when the quota resets", "tests/test_rate_limit_headers.py::test_a_reset_past_the_budget_stops_at_once"),
    FaultRow("prompt longer than the context", PERMANENT,
             "the message says so (\"maximum context length\", \"longer than the maximum model length\", \"exceeds the available "
             "context size\", ...), whatever the HTTP status or body shape",
             "stop at once: lower --batch_size (sharded: more --num-batches) or serve a longer context",
             "tests/test_faults.py::test_context_length_refusals_stop_at_once_whatever_the_shape"),
    FaultRow("logprobs capped below what we ask", PERMANENT, "the message says the logprobs asked are above the server's maximum",
             "stop at once: restart vLLM with --max-logprobs", "tests/test_faults.py::test_faults_that_asking_again_cannot_cure_stop_at_once"),
    FaultRow("key refused", PERMANENT, "HTTP 401 or 403", "stop at once: check VLLM_API_KEY / API_KEY",
             "tests/test_vllm_route.py::test_api_key_is_sent_and_never_shown"),
    FaultRow("request refused", PERMANENT, "any other HTTP 4xx (a model that is not served, a bad field)",
             "stop at once with the server's words", "tests/test_faults.py::test_faults_that_asking_again_cannot_cure_stop_at_once"),
    FaultRow("TLS handshake fails", PERMANENT, "https:// to a port that speaks plain HTTP, or a certificate that is not trusted",
             "stop at once: write http://, or fix the certificate", "tests/test_faults.py::test_https_to_a_plain_http_port_stops_at_once"),
    FaultRow("prompt the server can't answer", PERMANENT,
             "HTTP 500 three times on one request while a one-line probe is answered; sent alone, some of its prompts fail twice",
             "stop at once naming the claims whose prompts fail", "tests/test_faults.py::test_a_poisoned_prompt_is_found_and_named"),
    FaultRow("top-k below 2", PERMANENT, "API_TOP_K below 2, on the hosted route", "refused at start: the score needs both label tokens",
             "tests/test_route_registry.py::test_api_top_k_below_two_is_refused_at_start"),
    FaultRow("list prompts refused", SERVER_SHAPED, "HTTP 400/422 whose message says the prompt must be a string, not a list",
             "send one prompt per request from then on, with a note", "tests/test_vllm_route.py::test_a_server_that_rejects_list_prompts_is_detected_once"),
    FaultRow("lists fail, single prompts work", SERVER_SHAPED,
             "HTTP 500 three times on a list while a one-line probe and then every prompt alone are answered",
             "send one prompt per request from then on, with a note",
             "tests/test_vllm_route.py::test_a_bare_500_to_every_list_falls_back_to_one_prompt_per_request"),
    FaultRow("choice indices wrong", SERVER_SHAPED, "a list answered with choice indices missing, repeated or too few",
             "send one prompt per request from then on, with a note; their answers are checked too",
             "tests/test_answer_checks.py::test_a_list_answered_at_index_zero_falls_back_to_single_prompts"),
    FaultRow("choice count wrong for one prompt", SERVER_SHAPED, "one prompt answered with no choice or several",
             "stop at once", "tests/test_answer_checks.py::test_malformed_answers_stop_at_once_and_are_never_cached"),
    FaultRow("not an OpenAI completions body", SERVER_SHAPED, "a 200 that holds no `choices` list (a JSON array, llama.cpp's own format)",
             "stop at once", "tests/test_answer_checks.py::test_malformed_answers_stop_at_once_and_are_never_cached"),
    FaultRow("no logprobs", SERVER_SHAPED, "a choice without logprobs", "stop at once",
             "tests/test_faults.py::test_missing_logprobs_stop_at_once"),
    FaultRow("logprobs in no known shape", SERVER_SHAPED, "logprobs that are neither vLLM's nor llama.cpp's shape", "stop at once",
             "tests/test_answer_checks.py::test_malformed_answers_stop_at_once_and_are_never_cached"),
    FaultRow("token ids as keys", SERVER_SHAPED, "top-k keys of the form `token_id:1234` (vLLM --return-tokens-as-token-ids)",
             "stop at once: restart the server without that flag", "tests/test_answer_checks.py::test_malformed_answers_stop_at_once_and_are_never_cached"),
    FaultRow("sentinel values", SERVER_SHAPED, "fewer than two finite entries once values at or below -1000 (vLLM's -9999) are dropped",
             "stop at once", "tests/test_answer_checks.py::test_malformed_answers_stop_at_once_and_are_never_cached"),
    FaultRow("not a log-probability", SERVER_SHAPED,
             "a value that is not a finite number <= 0 (a string, NaN, Infinity, 800), or an entry with no token text",
             "stop at once", "tests/test_answer_checks.py::test_malformed_answers_stop_at_once_and_are_never_cached"),
    FaultRow("exact label logprobs missing", SERVER_SHAPED,
             "asked for the label tokens' exact logprobs (logprob_token_ids), an answer lacks one of them",
             "stop at once", "tests/test_answer_checks.py::test_malformed_answers_stop_at_once_and_are_never_cached"),
)
FAULTS_BY_NAME = {row.name: row for row in FAULTS}


def fault_row(name: str) -> FaultRow:
    """The row called ``name`` (a KeyError here is a typo in the code, caught by the tests)."""
    return FAULTS_BY_NAME[name]


class ServerFault(ScoringError):
    """A fault a route recognised. ``fault`` is its row of FAULTS, which says whether to ask again."""

    def __init__(self, message: str, fault: str) -> None:
        super().__init__(message)
        self.fault = fault_row(fault)

    @property
    def retryable(self) -> bool:
        return self.fault.kind == TRANSIENT


class HTTPStatusError(ServerFault):
    """A non-200 answer. ``server_message`` is the server's own words; ``wait_hint`` the seconds a
    rate-limit header asked us to wait, if any."""

    def __init__(self, message: str, fault: str, status: int, server_message: str = "",
                 wait_hint: Optional[float] = None, wait_reason: str = "") -> None:
        super().__init__(message, fault)
        self.status = status
        self.server_message = server_message
        self.wait_hint = wait_hint
        self.wait_reason = wait_reason  # the header that asked for the wait, as the server wrote it


class PromptTooLong(ServerFault):
    """A prompt does not fit the model's context. ``server_fix`` is what to change on the serving side; the
    caller knows what to change on its own side (the pool size, or the number of shards)."""

    def __init__(self, message: str, server_fix: str) -> None:
        super().__init__(message, "prompt longer than the context")
        self.server_fix = server_fix


class PromptsRejected(ServerFault):
    """Some prompts fail on their own while the server answers others: ``positions`` index the prompts
    the route was given."""

    def __init__(self, message: str, positions: list[int]) -> None:
        super().__init__(message, "prompt the server can't answer")
        self.positions = positions


class EndpointDown(ScoringError):
    """An endpoint kept failing with transient faults past its retry budget: another endpoint may take its work."""


# -- reading an error answer ---------------------------------------------------------------------------

CONTEXT_LENGTH = re.compile(
    r"maximum context length|maximum model length|max_model_len|context[ _](length|window|size)|"
    r"exceeds? the (available )?context|too many tokens|prompt is too long|input is too long|exceed_context_size",
    re.IGNORECASE,
)
LOGPROBS_CAP = re.compile(r"logprobs.*(max(imum)? allowed|greater than)|(max(imum)? allowed|greater than).*logprobs", re.IGNORECASE)
# What a server that takes one prompt per request says about a list: the prompt's type is wrong.
PROMPT_TYPE = re.compile(r"valid string|must be (a )?str|not a list|expected (a )?str|list.*not (supported|allowed)|"
                         r"array.*not (supported|allowed)|invalid type", re.IGNORECASE)


def server_message(body: str) -> str:
    """The server's own words in an error body, whatever its shape: OpenAI's {"error": {"message"}},
    {"error": "..."}, FastAPI's {"detail": ...}, {"message": ...}, or plain text."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return body.strip()[:500]
    return _message_in(parsed)[:500] or body.strip()[:500]


def _message_in(parsed: Any) -> str:
    if isinstance(parsed, str):
        return parsed
    if isinstance(parsed, list):
        return "; ".join(filter(None, (_message_in(item) for item in parsed)))
    if isinstance(parsed, dict):
        for key in ("error", "message", "detail", "msg"):
            if key in parsed:
                found = _message_in(parsed[key])
                if found:
                    return found
    return ""


def is_context_length(message: str) -> bool:
    return CONTEXT_LENGTH.search(message) is not None


def classify_status(status: int, message: str) -> str:
    """The row of FAULTS for a non-200 answer with the server's ``message``; the message decides before
    the status does, since wrapping servers pass a refusal on under any status."""
    if is_context_length(message):
        return "prompt longer than the context"
    if LOGPROBS_CAP.search(message):
        return "logprobs capped below what we ask"
    if status in (401, 403):
        return "key refused"
    if status == 429:
        return "rate limited"
    if status >= 500:
        return "server error"
    if status in (400, 422) and "prompt" in message.lower() and PROMPT_TYPE.search(message):
        return "list prompts refused"
    return "request refused"


def explain_status(status: int, message: str, url: str, key_setting: str, top_k: int) -> str:
    """What a non-200 answer means, in words that say what to change."""
    fault = classify_status(status, message)
    if fault == "prompt longer than the context":
        return f"{url} answered {status}: a prompt is longer than the model's context (the server says: {message[:200]})"
    if fault == "logprobs capped below what we ask":
        return f"{url} answered {status}: the server caps logprobs below the {top_k} we ask for. Restart vLLM with --max-logprobs {top_k}"
    if fault == "key refused":
        return f"{url} answered {status}: the API key was refused or is missing. Check {key_setting}"
    return f"{url} answered {status}: {message[:300]}"
