"""What labelling cost: summary.json's cost block (per run, over every invocation, and per labelled claim; dollars
on the hosted API at the price settings), eval.json's for the evaluation's own scoring, and comparison.json's
cost beside each run's accuracy.

No model: runs go through ICM.main in-process on the stand-in route (tests/stand_in_pipeline.py), or over real HTTP
to a hosted-API stand-in that reports a predictable ``usage`` (tests/hosted_api_stand_in.py).
"""
import json

import pytest

from core.llm_api.settings import SettingsError, load_settings
from src.experiments import ICM, evaluate
from core.llm_api.base_llm import RouteStats
from src.pipeline.scoring_cost import INPUT_PRICE_SETTING, OUTPUT_PRICE_SETTING, Prices
from src.run_directory.cost_ledger import ENGINE_STATS_REFRESH_SECONDS, CostLedger
from tests.cli_helpers import refused
from tests.hosted_api_stand_in import HostedAPIStandIn
from tests.stand_in_pipeline import PromptHashRoute, StandInPipeline, use_stand_in

KEY = "sk-cost-test-7e1d93"
MODEL = "base-model-1"
DEMO = ["--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--no-progress"]
PER_CLAIM = ("requests", "prompt_tokens", "computed_prompt_tokens", "output_tokens", "wall_seconds")


class CountingRoute(PromptHashRoute):
    """The stand-in route, counting prompt tokens (words) as an engine would, and computing half of them."""

    def next_token_logprobs(self, prompts):
        answers = super().next_token_logprobs(prompts)
        words = sum(len(p.split()) for p in prompts)
        self.stats.prompt_tokens += words
        self.stats.computed_tokens += words // 2
        return answers


@pytest.fixture
def counting(monkeypatch, tmp_path):
    monkeypatch.setattr("tests.stand_in_pipeline.PromptHashRoute", CountingRoute)
    return use_stand_in(monkeypatch, tmp_path)


@pytest.fixture
def hosted(monkeypatch):
    """A hosted-API stand-in, with LLAMA_API_BASE and API_KEY pointing at it; ``hosted(**switches)``."""
    servers = []

    def make(**switches) -> HostedAPIStandIn:
        server = HostedAPIStandIn(**switches).start()
        servers.append(server)
        monkeypatch.setenv("LLAMA_API_BASE", server.url)
        monkeypatch.setenv("API_KEY", KEY)
        return server

    yield make
    for server in servers:
        server.stop()


def icm(capsys, out, *flags, K=4):
    code = ICM.main([*DEMO, "--K", str(K), "--output-dir", str(out), *flags])
    return code, capsys.readouterr().err


def resume(capsys, out):
    code = ICM.main(["--resume", str(out), "--no-progress"])
    return code, capsys.readouterr().err


def summary_cost(out):
    summary = json.loads((out / "summary.json").read_text())
    return summary, summary["cost"]


def set_prices(monkeypatch, input_price="2.5", output_price="10"):
    monkeypatch.setenv(INPUT_PRICE_SETTING, input_price)
    monkeypatch.setenv(OUTPUT_PRICE_SETTING, output_price)


def test_per_claim_figures_are_the_run_totals_over_the_labelled_claims(counting, tmp_path, capsys, monkeypatch):
    set_prices(monkeypatch)  # a price means nothing on a self-hosted route
    out = tmp_path / "run"
    code, err = icm(capsys, out)
    assert code == 0, err
    summary, cost = summary_cost(out)
    stats = counting.instances[0].stand_in.stats
    labelled = summary["final"]["labeled"]
    assert labelled > 0 and cost["labelled_claims"] == labelled
    assert (cost["run"]["requests"], cost["run"]["prompt_tokens"], cost["run"]["computed_prompt_tokens"]) == \
        (stats.requests, stats.prompt_tokens, stats.computed_tokens)
    assert stats.prompt_tokens > 0 and 0 < stats.computed_tokens < stats.prompt_tokens
    # The route reads no usage: one generated token (max_tokens) per prompt scored, and the block says so.
    assert cost["run"]["output_tokens"] == stats.prompts and cost["output_tokens_from"].startswith("max_tokens")
    for name in PER_CLAIM:
        assert cost["per_labelled_claim"][name] == pytest.approx(cost["run"][name] / labelled)
    assert cost["run"]["wall_seconds"] == summary["wall_seconds"]
    assert cost["run"]["dollars"] is None and cost["per_labelled_claim"]["dollars"] is None
    assert "not a priced API" in cost["dollars_note"] and "wall_seconds" in cost["dollars_note"]
    assert cost["counted_from_start"] is True and cost["run"]["invocations"] == 1
    # The top-level counts are the run's totals (here one invocation's: the cost block's this_invocation after a resume).
    assert (summary["requests"], summary["prompt_tokens"]) == (stats.requests, stats.prompt_tokens)


def test_on_the_hosted_route_dollars_are_the_reported_tokens_times_the_price(hosted, tmp_path, capsys, monkeypatch):
    server = hosted(completion_tokens=3)  # more than max_tokens: the count must come from usage, not be assumed
    set_prices(monkeypatch, "2.5", "10")
    out = tmp_path / "run"
    code, err = icm(capsys, out, "--model", MODEL)
    assert code == 0, err
    summary, cost = summary_cost(out)
    assert summary["route"] == "external"
    prompt_tokens, output_tokens = server.usage_reported()
    run = cost["run"]
    assert run["requests"] == len(server.seen) > 0
    assert (run["prompt_tokens"], run["output_tokens"]) == (prompt_tokens, output_tokens)
    assert run["output_tokens"] == 3 * run["requests"] and cost["output_tokens_from"].startswith("usage")
    assert run["dollars"] == pytest.approx((prompt_tokens * 2.5 + output_tokens * 10) / 1e6, rel=1e-12)
    labelled = summary["final"]["labeled"]
    assert cost["per_labelled_claim"]["dollars"] == pytest.approx(run["dollars"] / labelled)
    assert cost["price"] == {"input_per_mtok": 2.5, "output_per_mtok": 10.0}
    assert "API_PRICE_INPUT_PER_MTOK=2.5" in cost["dollars_note"]
    # The key went out in the Authorization header and nowhere else.
    assert all(s["authorization"] == f"Bearer {KEY}" for s in server.seen)
    assert KEY not in err and all(KEY.encode() not in path.read_bytes() for path in out.iterdir())


def test_without_usage_the_output_is_max_tokens_per_prompt_and_the_prompt_an_estimate(hosted, tmp_path, capsys,
                                                                                      monkeypatch):
    server = hosted(report_usage=False)
    set_prices(monkeypatch, "1", "1")
    out = tmp_path / "run"
    code, err = icm(capsys, out, "--model", MODEL)
    assert code == 0, err
    cost = summary_cost(out)[1]
    prompts = [s["body"]["prompt"] for s in server.seen]
    assert cost["run"]["output_tokens"] == len(prompts) and cost["output_tokens_from"].startswith("max_tokens")
    assert cost["run"]["prompt_tokens"] == sum(max(1, len(p) // 4) for p in prompts)  # the route's 4 characters a token
    assert cost["run"]["prompt_tokens_estimated"] == len(prompts) and "estimated" in cost["dollars_note"]


@pytest.mark.parametrize("prices, missing", [({}, [INPUT_PRICE_SETTING, OUTPUT_PRICE_SETTING]),
                                             ({INPUT_PRICE_SETTING: "3"}, [OUTPUT_PRICE_SETTING])])
def test_without_a_price_dollars_are_null_and_the_note_names_the_setting(hosted, tmp_path, capsys, monkeypatch,
                                                                          prices, missing):
    hosted()
    for name, value in prices.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    code, err = icm(capsys, out, "--model", MODEL)
    assert code == 0, err
    cost = summary_cost(out)[1]
    assert cost["run"]["dollars"] is None and cost["per_labelled_claim"]["dollars"] is None and cost["price"] is None
    assert cost["run"]["prompt_tokens"] > 0  # the tokens are counted all the same
    for name in missing:
        assert name in cost["dollars_note"]
    assert (INPUT_PRICE_SETTING in cost["dollars_note"]) == (INPUT_PRICE_SETTING in missing)


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_a_price_that_is_not_a_number_of_dollars_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv(OUTPUT_PRICE_SETTING, value)
    with pytest.raises(SettingsError, match=OUTPUT_PRICE_SETTING):
        load_settings()


def test_a_bad_price_stops_icm_before_any_model_call_with_one_error_line(counting, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(INPUT_PRICE_SETTING, "$0.50")
    code, err = icm(capsys, tmp_path / "run")
    refused(code, err, INPUT_PRICE_SETTING, "must be a number")
    assert counting.instances == []


def test_a_price_of_zero_is_taken(monkeypatch):
    monkeypatch.setenv(INPUT_PRICE_SETTING, "0")
    assert load_settings().api_price_input_per_mtok == 0.0


def stopped_then_resumed(monkeypatch, tmp_path, capsys, between=None):
    """A run stopped by its route after 5 requests, ``between`` applied to its folder, then resumed to the end.
    Returns the folder, the two invocations' route stats and the first invocation's summary cost."""
    stand_in = use_stand_in(monkeypatch, tmp_path, fail_after=5)
    out = tmp_path / "run"
    code, err = icm(capsys, out, K=8)
    assert code == 2 and "the stand-in server is down" in err
    first_cost = summary_cost(out)[1]
    if between is not None:
        between(out)
    monkeypatch.setattr(StandInPipeline, "fail_after", None)
    code, err = resume(capsys, out)
    assert code == 0, err
    first, second = (pipeline.stand_in.stats for pipeline in stand_in.instances)
    return out, first, second, first_cost


def test_a_resumed_run_adds_up_the_cost_of_every_invocation(counting, monkeypatch, tmp_path, capsys):
    out, first, second, first_cost = stopped_then_resumed(monkeypatch, tmp_path, capsys)
    summary, cost = summary_cost(out)
    assert first_cost["run"]["requests"] == first.requests and first_cost["run"]["invocations"] == 1
    assert cost["this_invocation"]["requests"] == second.requests > 0
    assert cost["run"]["requests"] == first.requests + second.requests
    assert cost["run"]["prompt_tokens"] == first.prompt_tokens + second.prompt_tokens
    assert cost["run"]["computed_prompt_tokens"] == first.computed_tokens + second.computed_tokens
    assert cost["run"]["invocations"] == 2 and cost["counted_from_start"] is True
    assert cost["run"]["wall_seconds"] == pytest.approx(
        first_cost["run"]["wall_seconds"] + cost["this_invocation"]["wall_seconds"], abs=0.011)
    # Per labelled claim is over the whole run, not the last invocation.
    labelled = summary["final"]["labeled"]
    assert cost["per_labelled_claim"]["requests"] == pytest.approx((first.requests + second.requests) / labelled)


def test_a_finished_run_extended_counts_the_requests_made_after_its_last_checkpoint(counting, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = icm(capsys, out, K=2)
    assert code == 0, err
    checkpointed = json.loads((out / "checkpoint.json").read_text())["cost"]
    first = counting.instances[0].stand_in.stats
    # The end's predictions of the claims never labelled came after the last checkpoint: only summary.json has them.
    assert checkpointed["requests"] < first.requests == summary_cost(out)[1]["run"]["requests"]
    code = ICM.main(["--resume", str(out), "--K", "4", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    second = counting.instances[1].stand_in.stats
    assert summary_cost(out)[1]["run"]["requests"] == first.requests + second.requests


def test_an_invocation_killed_without_a_summary_counts_up_to_its_last_checkpoint(counting, monkeypatch, tmp_path,
                                                                                   capsys):
    checkpointed = {}

    def killed(out):  # as if the process had died: no summary.json, only the checkpoint's totals
        checkpointed.update(json.loads((out / "checkpoint.json").read_text())["cost"])
        (out / "summary.json").unlink()

    out, first, second, _ = stopped_then_resumed(monkeypatch, tmp_path, capsys, between=killed)
    cost = summary_cost(out)[1]
    assert 0 < checkpointed["requests"] <= first.requests and checkpointed["invocations"] == 1
    assert cost["run"]["requests"] == checkpointed["requests"] + second.requests
    assert cost["run"]["prompt_tokens"] == checkpointed["prompt_tokens"] + second.prompt_tokens
    assert cost["run"]["invocations"] == 2 and cost["counted_from_start"] is True


def test_a_newer_checkpoint_wins_over_an_older_summary(counting, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(StandInPipeline, "fail_after", 5)
    out = tmp_path / "run"
    assert icm(capsys, out, K=12)[0] == 2
    first_summary = (out / "summary.json").read_text()
    assert resume(capsys, out)[0] == 2  # the second invocation stops too ...
    (out / "summary.json").write_text(first_summary)  # ... and is made to look killed: its summary never written
    checkpointed = json.loads((out / "checkpoint.json").read_text())["cost"]
    assert checkpointed["invocations"] == 2
    monkeypatch.setattr(StandInPipeline, "fail_after", None)
    code, err = resume(capsys, out)
    assert code == 0, err
    third = counting.instances[2].stand_in.stats
    cost = summary_cost(out)[1]
    assert cost["run"]["requests"] == checkpointed["requests"] + third.requests
    assert cost["run"]["invocations"] == 3


@pytest.mark.parametrize("record", [None, "garbage", {"requests": -1}])
def test_a_resume_without_readable_earlier_totals_says_it_counts_only_itself(counting, monkeypatch, tmp_path, capsys,
                                                                             record):
    def forget(out):  # a run started by an icm that kept no totals, or a damaged record: never a reason to stop
        checkpoint = json.loads((out / "checkpoint.json").read_text())
        if record is None:
            del checkpoint["cost"]
        else:
            checkpoint["cost"] = record
        (out / "checkpoint.json").write_text(json.dumps(checkpoint))
        (out / "summary.json").unlink()

    out, _, second, _ = stopped_then_resumed(monkeypatch, tmp_path, capsys, between=forget)
    cost = summary_cost(out)[1]
    assert cost["counted_from_start"] is False and "only" in cost["covers"]
    assert cost["run"]["requests"] == cost["this_invocation"]["requests"] == second.requests


def test_eval_json_and_comparison_json_carry_each_runs_cost_beside_its_accuracy(hosted, tmp_path, capsys, monkeypatch):
    server = hosted()
    set_prices(monkeypatch, "2", "8")
    runs = {}
    for labeller in ("icm", "bootstrap"):
        runs[labeller] = tmp_path / labeller
        code, err = icm(capsys, runs[labeller], "--model", MODEL, "--labeller", labeller)
        assert code == 0, err
    before = len(server.seen)
    code = evaluate.main(["--run-dir", str(runs["icm"]), "--limit", "6", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((runs["icm"] / "eval.json").read_text())
    scored = server.seen[before:]
    prompt_tokens, output_tokens = server.usage_reported()[0] - sum(
        max(1, len(s["body"]["prompt"].split())) for s in server.seen[:before]), len(scored)
    evaluation = report["cost"]["evaluation"]
    assert evaluation["requests"] == len(scored) > 0 and evaluation["prompt_tokens"] == prompt_tokens
    assert evaluation["dollars"] == pytest.approx((prompt_tokens * 2 + output_tokens * 8) / 1e6, rel=1e-12)
    assert report["cost"]["test_claims"] == report["n_test"] == 6
    assert report["cost"]["per_test_claim"]["requests"] == pytest.approx(len(scored) / 6)

    code = evaluate.main(["--run-dir", *map(str, runs.values()), "--compare-out", str(tmp_path / "cmp"),
                          "--limit", "6", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    for entry in comparison["runs"]:
        cost = summary_cost(runs[entry["labeller"]])[1]
        assert entry["test_accuracy"]["accuracy"] is not None
        assert entry["labelling_cost"]["route"] == "external"
        assert entry["labelling_cost"]["labelled_claims"] == cost["labelled_claims"]
        for name in ("requests", "computed_prompt_tokens", "dollars"):
            assert entry["labelling_cost"]["per_labelled_claim"][name] == cost["per_labelled_claim"][name]
            assert entry["labelling_cost"]["run"][name] == cost["run"][name]
        assert entry["evaluation_cost"]["evaluation"]["requests"] > 0
    for line in comparison["labellers"]:
        [entry] = [r for r in comparison["runs"] if r["labeller"] == line["labeller"]]
        assert line["cost_per_labelled_claim"]["runs"] == 1
        assert line["cost_per_labelled_claim"]["dollars"] == entry["labelling_cost"]["per_labelled_claim"]["dollars"]
    assert "engine tokens/claim" in captured.out
    assert all(KEY.encode() not in path.read_bytes() for path in (tmp_path / "cmp").iterdir())
    assert KEY not in captured.out + captured.err


def test_a_run_recorded_before_the_accounting_has_no_cost_in_the_comparison(counting, tmp_path, capsys, monkeypatch):
    from src.evaluation.comparison import comparison_report

    out = tmp_path / "run"
    assert icm(capsys, out)[0] == 0
    summary, _ = summary_cost(out)
    del summary["cost"]
    report = {"testbed": "demo", "model": "m", "n_test": 2, "seed": 0, "run_condition": "ICM labels", "test_items": [0, 1],
              "conditions": {name: {"accuracy": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n": 2, "correct": [1, 0]}
                             for name in ("zero-shot", "ICM labels")}}
    comparison = comparison_report([(str(out), summary["settings"], report, False)], summaries=[summary])
    [entry] = comparison["runs"]
    assert entry["labelling_cost"] is None and entry["evaluation_cost"] is None
    assert comparison["labellers"][0]["cost_per_labelled_claim"] is None


def test_checkpoints_read_a_servers_token_counters_at_most_once_a_minute():
    class Api:  # a server route: its token counts are fresh only after refresh_stats (one /metrics request)
        route_name, stats, refreshes = "vllm", RouteStats(requests=3, prompts=3), 0

        def refresh_stats(self):
            self.refreshes += 1
            self.stats.prompt_tokens = 100 * self.refreshes
            return self.stats

    now = [0.0]
    ledger, api = CostLedger(None, True, 0.0, Prices(), clock=lambda: now[0]), Api()
    seen = []
    for now[0] in (1.0, ENGINE_STATS_REFRESH_SECONDS - 1, ENGINE_STATS_REFRESH_SECONDS, ENGINE_STATS_REFRESH_SECONDS + 5,
                   2 * ENGINE_STATS_REFRESH_SECONDS + 1):
        seen.append(ledger.for_checkpoint(api)["prompt_tokens"])
    assert api.refreshes == 2 and seen == [0, 0, 100, 100, 200]
