import math
import random

import pytest

from core.llm_api.logprobs import MalformedResponse, parse_completion_logprobs
from src.pipeline.label_scores import PROB_FLOOR, label_logodds, token_label
from src.prompts.prompts import DEMO_SEPARATOR, judge_prompt, leave_one_out_prompts
from tests.claim_factory import claim


def test_whole_token_matching_does_not_count_untrue_as_true():
    assert token_label(" untrue", "substring") is True  # the reference's flaw
    assert token_label(" untrue", "whole") is None
    assert token_label(" True", "whole") is True
    assert token_label("FALSE\n", "whole") is False
    assert token_label(" Truely", "whole") is None


def test_label_logodds_by_hand():
    top = [(" True", math.log(0.6)), (" true", math.log(0.1)), (" False", math.log(0.2)), (" untrue", math.log(0.05))]
    assert label_logodds(top, "whole") == pytest.approx(math.log(0.7 + PROB_FLOOR) - math.log(0.2 + PROB_FLOOR))
    assert label_logodds(top, "substring") == pytest.approx(math.log(0.75 + PROB_FLOOR) - math.log(0.2 + PROB_FLOOR))
    only_true = [(" True", math.log(0.5))]
    assert label_logodds(only_true, "whole") == pytest.approx(math.log(0.5 + PROB_FLOOR) - math.log(PROB_FLOOR))
    assert label_logodds([(" maybe", -0.1)], "whole") == 0.0


def llamacpp_choice(index, pairs):
    return {"index": index, "logprobs": {"content": [{"token": pairs[0][0], "logprob": pairs[0][1],
            "top_logprobs": [{"id": i, "token": t, "bytes": [], "logprob": lp} for i, (t, lp) in enumerate(pairs)]}]}}


def vllm_choice(index, pairs):
    return {"index": index, "logprobs": {"tokens": [pairs[0][0]], "token_logprobs": [pairs[0][1]],
            "top_logprobs": [dict(pairs)], "text_offset": [0]}}


@pytest.mark.parametrize("make_choice", [llamacpp_choice, vllm_choice])
def test_both_logprob_shapes_parse_and_map_by_index(make_choice):
    answers = [[(" True", -0.1 * (i + 1)), (" False", -2.0)] for i in range(5)]
    choices = [make_choice(i, answers[i]) for i in range(5)]
    random.Random(3).shuffle(choices)
    parsed = parse_completion_logprobs({"choices": choices}, 5)
    assert [dict(p)[" True"] for p in parsed] == pytest.approx([-0.1, -0.2, -0.3, -0.4, -0.5])


def test_vllm_negative_infinity_sentinel_is_dropped():
    parsed = parse_completion_logprobs({"choices": [vllm_choice(0, [(" True", -0.5), (" maybe", -1.5), (" False", -9999.0)])]}, 1)
    assert parsed == [[(" True", -0.5), (" maybe", -1.5)]]
    with pytest.raises(MalformedResponse, match="1 usable logprob"):  # nothing left to compare: the server is broken
        parse_completion_logprobs({"choices": [vllm_choice(0, [(" True", -0.5), (" False", -9999.0)])]}, 1)


@pytest.mark.parametrize("response, message", [
    ({"choices": [llamacpp_choice(0, [("a", -1.0)])]}, "sent 2 prompts but got 1"),
    ({"choices": [llamacpp_choice(0, [("a", -1.0)]), llamacpp_choice(0, [("a", -1.0)])]}, "repeated"),
    ({"choices": [{"index": 0, "logprobs": None}, {"index": 1, "logprobs": None}]}, "no logprobs"),
    ({"error": {"message": "boom"}}, "boom"),
])
def test_malformed_responses_say_what_is_wrong(response, message):
    with pytest.raises(MalformedResponse, match=message):
        parse_completion_logprobs(response, 2)


def claims(n):
    return [claim(i, i % 2, group=i, text=f"Question: q{i}\nClaim: c{i}\nI think this claim is") for i in range(n)]


def test_leave_one_out_prompts_hold_exactly_the_other_claims_in_order():
    pool = claims(4)
    prompts = leave_one_out_prompts(pool, "space-in-label", "reference")
    assert len(prompts) == 4
    for i, prompt in enumerate(prompts):
        blocks = prompt.split(DEMO_SEPARATOR)
        assert [b.split("\n")[1] for b in blocks] == [f"Claim: c{j}" for j in range(4) if j != i] + [f"Claim: c{i}"]
        assert blocks[-1].endswith("I think this claim is")
        assert all(b.endswith((" is True", " is False")) for b in blocks[:-1])
        assert prompt == judge_prompt(pool[i], [c for c in pool if c.uid != i], "space-in-label")


def test_reference_label_style_puts_the_space_in_the_template():
    prompt = judge_prompt(claims(2)[1], claims(1), "reference")
    assert prompt.endswith("I think this claim is ")
    assert "I think this claim is False\n\n" in prompt
