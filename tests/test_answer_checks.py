"""Answers that carry no information about the labels never become scores or response-cache entries.

Each server below answers the way a real server has been reported to answer (../shared/notes/serving-facts.md),
emulated by the forwarding test server in front of llama.cpp's real server. A malformed answer stops at once,
after one request, with the server fault named; a list the server can't answer properly falls back to one
prompt per request, whose answers equal a normal server's.
"""
import math
import sqlite3

import pytest

from core.llm_api.faults import ServerFault
from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.pipeline.label_scores import LOW_LABEL_MASS, holds_a_label, low_mass_warning
from src.run_directory.run_outputs import label_rows
from src.config.run_config import PromptConfig
from src.pipeline.pool_scoring import LabelsNotFound, PoolScorer
from tests.claim_factory import by_uid, claim
from src.benchmarks.synthetic_model import SyntheticModel

PROMPTS = ["Item 1: the number after 1 is", "Item 2: the number after 2 is", "Item 3: the number after 3 is"]
CLAIM_PROMPTS = [f"Question: Is {n} even?\nClaim: {n} is {'even' if n % 2 == 0 else 'odd'}.\nI think this claim is"
                 for n in range(3)]


def client(url: str, cache_dir=None, **settings) -> ModelAPI:
    return ModelAPI(settings=Settings(vllm_base_url=url, vllm_backoff_seconds=0.05, **settings), deterministic=True,
                    cache_dir=cache_dir, worth_caching=holds_a_label("whole"))


def cached_rows(folder) -> int:
    with sqlite3.connect(folder / "responses.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


MALFORMED = {  # switches -> the row of core/llm_api/faults.py FAULTS, and words the error must say
    "token ids": ({"token_id_keys": True}, "token ids as keys", "--return-tokens-as-token-ids"),
    "sentinels, vLLM shape": ({"vllm_shape": True, "sentinel_after_top": True}, "sentinel values", "-9999"),
    "sentinels, llama.cpp shape": ({"sentinel_after_top": True}, "sentinel values", "1 usable logprob"),
    "a logprob as a string": ({"bad_logprob": "string", "vllm_shape": True}, "not a log-probability", "not a number"),
    "Infinity": ({"bad_logprob": "infinity"}, "not a log-probability", "finite number <= 0"),
    "NaN": ({"bad_logprob": "nan"}, "not a log-probability", "finite number <= 0"),
    "too large for exp": ({"bad_logprob": "huge"}, "not a log-probability", "800"),
    "an entry with no token": ({"bad_logprob": "no_token"}, "not a log-probability", "no token text"),
    "no known shape": ({"bad_logprob": "shape"}, "logprobs in no known shape", "no known shape"),
    "llama.cpp's own format": ({"own_format": True}, "not an OpenAI completions body", "not OpenAI-compatible"),
    "exact logprobs dropped mid-run": ({"pretend_vllm_version": "0.32.0", "honour_logprob_token_ids": True,
                                       "drop_label_words_from": 2}, "exact label logprobs missing", "--label-logprobs topk"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_answers_stop_at_once_and_are_never_cached(forwarding, tmp_path, name):
    switches, fault, words = MALFORMED[name]
    server = forwarding(**switches)
    with client(server.url, cache_dir=tmp_path) as api:
        with pytest.raises(ServerFault) as failure:
            api.next_token_logprobs(CLAIM_PROMPTS)
        assert api.describe()["retries"] == 0
    assert failure.value.fault.name == fault and words in str(failure.value)
    probes = 1 if switches.get("honour_logprob_token_ids") else 0  # the exact-logprobs probe at start
    assert len(server.completions()) == probes + 1  # asked once: nothing here can clear by asking again
    assert cached_rows(tmp_path) == 0


def test_one_prompt_answered_with_no_choice_stops_at_once(forwarding):
    server = forwarding(drop_choice_first=100)
    with client(server.url) as api:
        with pytest.raises(ServerFault) as failure:
            api.next_token_logprobs(PROMPTS[:1])
    assert failure.value.fault.name == "choice count wrong for one prompt" and len(server.completions()) == 1


@pytest.mark.parametrize("switches", [{"choices_at_index_zero": True}, {"drop_choice_first": 1}])
def test_a_list_answered_at_index_zero_falls_back_to_single_prompts(forwarding, capsys, switches):
    # A list answered with every choice at index 0 (seen on a real server), or with a choice missing.
    with client(forwarding().url) as api:
        expected = api.next_token_logprobs(PROMPTS)
    broken = forwarding(**switches)
    with client(broken.url) as api:
        assert api.next_token_logprobs(PROMPTS) == expected
        assert api.next_token_logprobs(PROMPTS) == expected
    assert [s.n_prompts for s in broken.completions()] == [3] + [1] * 6  # one list, then singles from then on
    err = capsys.readouterr().err
    assert err.count("with broken choices") == 1 and "one per request" in err


class ScriptedRoute(SyntheticModel):
    """The synthetic model, with chosen answers replaced: {prompt index in a call: answer}."""

    def __init__(self, claims, planted, replace=None):
        super().__init__(claims, planted)
        self.replace = replace or (lambda prompt, answer: answer)

    def next_token_logprobs(self, prompts):
        return [self.replace(p, a) for p, a in zip(prompts, super().next_token_logprobs(prompts))]


def pool(n=4):
    return by_uid(*[claim(uid, uid % 2, group=uid // 2, record=10 + uid, text=f"Question: q{uid}\nClaim: c{uid}\nI think this claim is")
                    for uid in range(n)])


def scorer_over(replace, **options) -> PoolScorer:
    claims = pool()
    route = ScriptedRoute(list(claims.values()), [c.label for c in claims.values()], replace)
    return PoolScorer(ModelAPI(route=route, settings=Settings()), PromptConfig(prompt_layout="reference", **options))


def test_label_words_absent_from_every_answer_stop_the_run():
    no_labels = lambda prompt, answer: [(" maybe", -0.5), (" perhaps", -1.5)]  # noqa: E731
    for label_absent in ("stop", "floor"):  # the reference's floor would make every score 0: never silently
        with pytest.raises(LabelsNotFound, match="none of the 4 answers holds ' True' or ' False'"):
            scorer_over(no_labels, label_absent=label_absent).pool_scores(pool())


def test_one_answer_without_a_label_stops_by_default_and_scores_zero_under_the_reference_floor():
    blind_claim = "Claim: c2\n"
    one_blind = lambda prompt, answer: [(" maybe", -0.5), (" perhaps", -1.5)] if prompt.endswith(blind_claim + "I think this claim is") else answer  # noqa: E731,E501
    with pytest.raises(LabelsNotFound, match=r"claim 2 \(record 12\) does not hold"):
        scorer_over(one_blind).pool_scores(pool())
    scores = scorer_over(one_blind, label_absent="floor").pool_scores(pool())
    assert scores[2] == 0.0 and all(scores[uid] != 0.0 for uid in (0, 1, 3))


def test_one_missing_label_is_the_floor_and_informative():
    only_true = lambda prompt, answer: [(" True", math.log(0.6)), (" maybe", math.log(0.3))]  # noqa: E731
    scorer = scorer_over(only_true)
    assert scorer.pool_scores(pool())[0] == pytest.approx(math.log(0.6 + 1e-5) - math.log(1e-5))
    assert scorer.pool_label_masses(pool())[0] == pytest.approx(0.6)


def test_label_mass_is_recorded_per_claim_and_a_low_median_is_warned_about():
    low = lambda prompt, answer: [(" 1", math.log(0.8)), (" True", math.log(0.05)), (" False", math.log(0.03))]  # noqa: E731
    scorer = scorer_over(low)
    claims = pool()
    rows = list(label_rows(claims, scorer.pool_scores(claims), scorer.pool_label_masses(claims)))
    assert [r["label_mass"] for r in rows] == pytest.approx([0.08] * 4)
    warning = low_mass_warning([r["label_mass"] for r in rows], "reference")
    assert "median of 8.0%" in warning and "--label-style reference" in warning
    assert low_mass_warning([LOW_LABEL_MASS + 0.01] * 3, "space-in-label") is None
