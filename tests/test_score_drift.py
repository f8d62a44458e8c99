"""The health check's prefix-cache self-test, without a model: the drift arithmetic (src/pipeline/score_drift.py), and
scripts/test_vllm_server.py against a pretend vLLM whose label log-odds move by a set amount when cached."""
import math
import re

import pytest

from src.pipeline.score_drift import DRIFT_TOLERANCE_NATS, score_drift
from tests.cli_helpers import load_script
from tests.score_drift_stand_in import ScoreDriftStandIn

health_check = load_script("test_vllm_server")

# Two close to the boundary (0.05 and -0.04), the rest farther out.
SCORES = [2.0, -1.0, 0.05, -0.04, 1.5, 0.3, -2.0, 0.8]


def test_the_drift_is_the_largest_move_and_counts_labels_within_reach_and_flipped():
    drift = score_drift(SCORES, [s - 0.1 for s in SCORES])
    assert drift.largest == pytest.approx(0.1)
    assert (drift.scored, drift.could_flip, drift.flipped) == (8, 2, 1)  # 0.05 and -0.04 within reach; 0.05 crosses
    assert drift.verdict() == "warn"


def test_the_largest_drift_over_several_scorings_counts_a_prompt_flipped_in_any_of_them():
    drift = score_drift([1.0, -0.5, 0.2], [1.0, -0.5, -0.1], [1.3, -0.4, 0.2])
    assert drift.largest == pytest.approx(0.3)
    assert (drift.could_flip, drift.flipped) == (1, 1)


@pytest.mark.parametrize("moved, verdict", [(0.0, "pass"), (DRIFT_TOLERANCE_NATS / 2, "pass"), (0.1, "warn"),
                                            (-1.2, "fail")])
def test_the_verdict_passes_within_the_tolerance_warns_above_and_fails_when_half_the_labels_are_within_reach(moved, verdict):
    assert score_drift(SCORES, [s + moved for s in SCORES]).verdict() == verdict


def test_a_scoring_that_is_not_comparable_is_refused():
    with pytest.raises(ValueError, match="every prompt"):
        score_drift([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        score_drift([1.0, 2.0], [1.0, math.nan])
    with pytest.raises(ValueError, match="nothing to compare"):
        score_drift([1.0])


@pytest.fixture
def stand_in():
    servers = []

    def start(**switches) -> ScoreDriftStandIn:
        servers.append(ScoreDriftStandIn(scores=list(SCORES), **switches).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def run(url: str, capsys) -> tuple[int, str]:
    code = health_check.main(["--base-url", url, "--timeout", "10"])
    return code, capsys.readouterr().out


def line(out: str, start: str) -> str:
    [found] = [text for text in out.splitlines() if start in text]
    return found


def largest(text: str) -> float:
    """The drift a report line gives, in nats (the pretend server's floor and label variants add ~1e-4)."""
    return float(re.search(r"at most ([0-9.e-]+) nats over 8 claim prompts", text).group(1))


def test_a_drift_within_the_tolerance_passes(stand_in, capsys):
    code, out = run(stand_in(cached_drift=0.004, exact_drift=-0.002).url, capsys)
    assert code == 0, out
    cache = line(out, "label log-odds cold vs from the prefix cache")
    assert cache.startswith("✓") and largest(cache) == pytest.approx(0.004, abs=3e-4) and "0 flipped" in cache
    exact = line(out, "exact vs top-20")
    assert exact.startswith("✓") and largest(exact) == pytest.approx(0.002, abs=3e-4)
    assert "⚠" not in out and "all checks passed\n" in out


def test_a_drift_over_the_tolerance_that_reaches_few_labels_warns_with_exit_code_0(stand_in, capsys):
    code, out = run(stand_in(cached_drift=-0.1).url, capsys)
    assert code == 0, out
    cache = line(out, "label log-odds cold vs from the prefix cache")
    assert cache.startswith("⚠") and largest(cache) == pytest.approx(0.1, abs=3e-4)
    assert "2 lie within that of 0 and could flip, 1 flipped" in cache
    assert "cold 0%" in cache  # every prompt's nonce kept the cold pass out of the cache
    assert "all checks passed (1 warning(s))" in out


def test_a_drift_that_reaches_half_the_labels_fails(stand_in, capsys):
    code, out = run(stand_in(exact_drift=-1.2).url, capsys)
    assert code == 1, out
    assert line(out, "label log-odds cold vs from the prefix cache").startswith("✓")
    exact = line(out, "exact vs top-20")
    assert exact.startswith("✗") and largest(exact) == pytest.approx(1.2, abs=3e-4) and "5 lie within that of 0 and could flip, 3 flipped" in exact
    assert "--label-logprobs topk" in out and "1 check(s) failed" in out


def test_a_server_without_exact_logprobs_compares_only_cold_and_cached(stand_in, capsys):
    server = stand_in(exact=False, cached_drift=0.02)
    code, out = run(server.url, capsys)
    assert code == 0, out
    assert line(out, "exact vs top-20").startswith("✓") and "offers no exact ones" in out
    assert not any("logprob_token_ids" in str(prompt) for prompt in server.seen)
    assert line(out, "cold vs from the prefix cache").startswith("⚠")
