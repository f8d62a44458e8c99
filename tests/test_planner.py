"""The run planner (scripts/plan_run.py, src/benchmarks/run_plan.py, src/benchmarks/prefill_probe.py), model-free:
its arithmetic on hand-computed cases, calibration, prices, validation, refusals, and the probe against a pretend
server whose answers take a known time."""
import asyncio
import dataclasses
import json
import random
from typing import Optional

import pytest
from aiohttp import web

from core.errors import UserError
from src.benchmarks.run_plan import (
    ASSUMED_POOL_SCORES,
    Job,
    PoolScoreCost,
    PoolScoreRate,
    Throughput,
    estimated_tokens,
    project,
    relative_error,
    simulate_pool_score,
)
from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records, sample_pool
from tests.cli_helpers import call, load_script, refused
from tests.threaded_app import ThreadedApp

plan_run = load_script("plan_run")

# The demo testbed needs no data files; --tokens-per-claim needs no tokenizer: no model anywhere here.
SMALL = ["--testbed", "demo", "--batch_size", "8", "--tokens-per-claim", "30", "--simulate-K", "6"]


def cost(**changes) -> PoolScoreCost:
    values = {"pool_size": 8, "prompts": 8, "requests": 1, "prompt_tokens": 1920, "computed_tokens": 760,
              "mean_prompt_tokens": 240, "simulated_pool_scores_per_iteration": 0.5, "cache_tokens": 10**6, "block_size": 16,
              "tokens_per_demonstration": 30}
    return PoolScoreCost(**{**values, **changes})


def test_the_job_is_each_pool_scores_cost_times_pool_scores_k_batches_and_seeds():
    rate = PoolScoreRate(pool_scores_per_iteration=2.0, overhead_seconds_per_iteration=0.5, source="test", assumed=False)
    job = Job(pool_size=8, batches=3, seeds=2, K=10)  # 60 iterations
    out = project(cost(), rate, Throughput(prefill_rate=1000.0, request_latency=0.1), job, "vllm")
    assert out["per_iteration"]["computed_tokens"] == 760 * 2
    assert out["job"]["computed_tokens"] == 760 * 2 * 10 * 3 * 2 == 91_200
    assert out["job"]["prompt_tokens"] == 1920 * 2 * 60
    assert out["job"]["requests"] == 1 * 2 * 60  # ours: one request per pool score
    assert out["per_run"]["computed_tokens"] == 760 * 2 * 10
    assert out["per_claim"]["computed_tokens"] == 760 * 2 * 10 / 8
    # hours = (computed tokens / rate + requests × latency + overhead) per iteration × iterations / 3600
    per_iteration_seconds = 1520 / 1000 + 2 * 0.1 + 0.5
    assert out["job"]["hours"] == pytest.approx(per_iteration_seconds * 60 / 3600)
    assert out["job"]["dollars"] is None and "--gpu-hour-price" in out["notes"]["dollars"]
    priced = project(cost(), rate, Throughput(prefill_rate=1000.0), job, "vllm", gpu_hour_price=4.0)
    assert priced["job"]["dollars"] == pytest.approx(priced["job"]["hours"] * 4.0)
    assert priced["per_run"]["dollars"] == pytest.approx(priced["job"]["dollars"] / 6)


def test_no_rate_means_no_hours_and_no_dollars():
    rate = PoolScoreRate(1.0, 0.0, "test", False)
    out = project(cost(), rate, Throughput(), Job(8, 1, 1, 4), "vllm", gpu_hour_price=2.0)
    assert out["job"]["hours"] is None and out["job"]["dollars"] is None
    assert "--prefill-rate" in out["notes"]["hours"]


def test_the_hosted_route_sends_each_prompt_alone_and_is_priced_per_token():
    rate = PoolScoreRate(2.0, 0.0, "test", False)
    job = Job(8, 1, 1, 10)
    limits = Throughput(requests_per_minute=60.0, tokens_per_minute=60_000.0)
    unpriced = project(cost(), rate, limits, job, "external")
    assert unpriced["job"]["dollars"] is None
    assert "API_PRICE_INPUT_PER_MTOK" in unpriced["notes"]["dollars"]
    out = project(cost(), rate, limits, job, "external", prices=(2.0, 10.0))
    assert out["job"]["requests"] == 8 * 2 * 10 and out["job"]["computed_tokens"] is None
    prompt_tokens, output_tokens = 1920 * 2 * 10, 8 * 2 * 10  # one output token per prompt (max_tokens 1)
    assert out["job"]["dollars"] == pytest.approx((prompt_tokens * 2.0 + output_tokens * 10.0) / 1e6)
    # The rate limits' floor: tokens 3840 / 1000 per second = 3.84 s against requests 16 / 1 per second = 16 s.
    assert out["per_iteration"]["hours"] == pytest.approx(16 / 3600)


def test_the_simulated_pool_score_counts_every_prompt_and_its_trie():
    claims = normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)
    rng = random.Random(0)
    pool = sample_pool(claims, TESTBED_SPECS["demo"], 8, rng, "demo")
    found = simulate_pool_score(pool, "tree", estimated_tokens(30), 10**7, 1, "ours", 6, rng)
    # Each of the 8 prompts: 7 demonstrations and the query, 30 tokens each.
    assert found.prompts == 8 and found.requests == 1 and found.prompt_tokens == 8 * 8 * 30
    assert found.mean_prompt_tokens == 8 * 30 and found.tokens_per_demonstration == 30
    # With a cache that holds everything, only what changed is computed: far less than what was sent.
    assert 0 < found.computed_tokens < found.prompt_tokens / 2


def test_estimated_tokens_share_a_beginning_as_the_texts_do():
    [a, b, c] = estimated_tokens(10).tokenize(["Claim: x. True", "Claim: x. False", "Other claim entirely"])
    assert len(a) == len(b) == len(c) == 10
    assert a[:9] == b[:9] and a[-1] != b[-1] and not set(a) & set(c)


def run_plan(tmp_path, capsys, *argv):
    out = tmp_path / "plan.json"
    code, err = call(plan_run, [*SMALL, *argv, "--json", out], capsys)
    assert code == 0, err
    return json.loads(out.read_text()), err


def test_without_calibration_the_issues_rate_is_used_and_said_loudly(tmp_path, capsys):
    plan, err = run_plan(tmp_path, capsys, "--K", "20", "--batches", "3", "--seeds", "2", "--prefill-rate", "1000")
    scores, iterations, _ = ASSUMED_POOL_SCORES["ours"]
    per_score = plan["projection"]["per_pool_score"]["computed_tokens"]
    assert plan["projection"]["job"]["computed_tokens"] == pytest.approx(per_score * scores / iterations * 20 * 3 * 2)
    assert plan["projection"]["job"]["hours"] == pytest.approx(plan["projection"]["job"]["computed_tokens"] / 1000 / 3600)
    assert plan["assumptions"]["pool_scores_per_iteration"].startswith("ASSUMED")
    assert "warning: pool scores per iteration are ASSUMED" in err
    assert plan["projection"]["job"]["dollars"] is None  # no --gpu-hour-price
    assert plan["setup"]["iterations"] == 20 * 3 * 2


def benchmark_report(path, *, pool=8, K=4, seed=0, modes=None):
    """A steady-state report in benchmark_icm.py --json's shape, with chosen figures."""
    def mode(scores, tokens, seconds, wall, engine):
        def total(value):
            return {"median": value / K, "p25": 0, "p75": 0, "min": 0, "max": 0, "total": value}
        return {"iterations": K, "wall_seconds": wall, "engine_seconds": engine, "engine_computed_tokens": tokens * 2,
                "pool_scores_computed": scores * 2,
                "per_iteration": {"pool_scores": total(scores), "computed_tokens": total(tokens), "prompt_tokens": total(tokens * 3),
                                  "requests": total(scores), "seconds": total(seconds)}}
    modes = modes or {"ours": mode(scores=6, tokens=4000, seconds=8.0, wall=10.0, engine=8.0)}
    path.write_text(json.dumps({"settings": {"testbed": "demo", "pool": pool, "K": K, "seed": seed, "layout": "tree",
                                             "base_url": None, "data_dir": str(path.parent)},
                                "regimes": {"steady": {"labelled_at_start": pool, "modes": modes}}}))
    return path


def test_a_calibration_file_replaces_the_assumed_rate(tmp_path, capsys):
    bench = benchmark_report(tmp_path / "bench.json")  # 6 pool scores in 4 iterations; (10 - 8) / 4 s client time each
    plan, err = run_plan(tmp_path, capsys, "--K", "10", "--prefill-rate", "1000", "--calibration", bench)
    iteration = plan["projection"]["per_iteration"]
    assert iteration["pool_scores"] == 1.5
    per_score = plan["projection"]["per_pool_score"]["computed_tokens"]
    assert iteration["computed_tokens"] == pytest.approx(per_score * 1.5)
    assert iteration["hours"] * 3600 == pytest.approx(per_score * 1.5 / 1000 + 0.5)
    assert "measured in" in plan["assumptions"]["pool_scores_per_iteration"] and "warning: pool scores per iteration" not in err


def test_validation_prints_projection_beside_measurement_with_the_relative_error(tmp_path, capsys):
    bench = benchmark_report(tmp_path / "bench.json")
    out = tmp_path / "validation.json"
    code, err = call(plan_run, ["--validate", bench, "--tokens-per-claim", "30", "--simulate-K", "6",
                                "--prefill-rate", "1000", "--calibration", bench, "--json", out], capsys)
    assert code == 0, err
    assert "--calibration is the file being validated" in err
    [row] = json.loads(out.read_text())["validation"]["modes"]
    assert row["measured"]["computed_tokens"] == 1000 and row["measured"]["seconds"] == 2.0  # totals / K = 4
    projected = row["projected"]["computed_tokens"]
    assert row["relative_error"]["computed_tokens"] == pytest.approx((projected - 1000) / 1000)
    assert row["within_tolerance"]["computed_tokens"] == (abs(projected - 1000) <= 150)
    assert row["projected"]["seconds"] == pytest.approx(projected / 1000 + 0.5)
    assert row["benchmark_engine_rate"] == 8000 / 8.0
    # Per pool score, over the whole run: 8000 engine tokens and 8 engine seconds over 12 pool scores.
    assert row["measured"]["computed_tokens_per_pool_score"] == pytest.approx(8000 / 12)
    assert row["measured"]["seconds_per_pool_score"] == pytest.approx(8.0 / 12)
    per_score = row["projected"]["computed_tokens_per_pool_score"]
    assert row["projected"]["seconds_per_pool_score"] == pytest.approx(per_score / 1000)
    assert row["within_tolerance"]["computed_tokens_per_pool_score"] == (abs(per_score - 8000 / 12) <= 0.15 * 8000 / 12)


def test_a_calibration_that_proposed_no_flip_is_refused_and_a_given_rate_replaces_it(tmp_path, capsys):
    bench = benchmark_report(tmp_path / "bench.json")
    report = json.loads(bench.read_text())
    report["regimes"]["steady"]["modes"]["ours"]["per_iteration"]["pool_scores"]["total"] = 0  # a fixed point
    bench.write_text(json.dumps(report))
    code, err = call(plan_run, [*SMALL, "--calibration", str(bench)], capsys)
    refused(code, err, "computed no pool score", "fixed point", "--pool-scores-per-iteration")
    plan, err = run_plan(tmp_path, capsys, "--K", "10", "--prefill-rate", "1000", "--pool-scores-per-iteration", "0.25")
    assert plan["projection"]["per_iteration"]["pool_scores"] == 0.25
    per_score = plan["projection"]["per_pool_score"]["computed_tokens"]
    assert plan["projection"]["per_run"]["computed_tokens"] == pytest.approx(per_score * 0.25 * 10)
    assert "(given)" in plan["assumptions"]["pool_scores_per_iteration"] and "pool scores per iteration are ASSUMED" not in err


def test_relative_error_is_against_the_measurement():
    assert relative_error(115, 100) == pytest.approx(0.15) and relative_error(85, 100) == pytest.approx(-0.15)
    assert relative_error(None, 100) is None and relative_error(5, 0) is None


@pytest.mark.parametrize("argv,words", [
    (["--calibration", "no-such-bench.json"], ["--calibration", "no such file or folder"]),
    (["--prefill-rate", "-5"], ["--prefill-rate", "positive"]),
    (["--testbed", "nope"], ["--testbed", "nope"]),
    (["--prefill-rate", "5", "--probe", "http://127.0.0.1:9"], ["--prefill-rate and --probe"]),
    (["--batches", "2", "--num-batches", "2"], ["--batches"]),
    (["--route", "external", "--gpu-hour-price", "2"], ["--gpu-hour-price"]),
    (["--probe", "ftp://host"], ["--probe", "http"]),
])
def test_bad_input_is_refused_with_one_error_line(tmp_path, capsys, argv, words):
    code, err = call(plan_run, [*SMALL, *argv], capsys)
    refused(code, err, *words)


def test_a_report_without_a_steady_state_is_refused(tmp_path, capsys):
    bench = tmp_path / "growing.json"
    bench.write_text(json.dumps({"settings": {}, "regimes": {"growing": {"modes": {}}}}))
    refused(*call(plan_run, [*SMALL, "--calibration", bench], capsys), "regimes.steady")
    bench.write_text("{not json")
    refused(*call(plan_run, ["--validate", bench], capsys), "JSON")


# -- the probe ---------------------------------------------------------------------------------------------

LATENCY, PER_TOKEN = 0.05, 0.001  # the pretend server's time: 50 ms a request + 1 ms a word (its tokens) ...
DEPTH_SCALE = 1000  # ... times (1 + the word's position / this): deeper words attend to more, as in a real model


class SlowServer:
    """A pretend OpenAI-compatible server with a prefix cache: a completion computes the words its prompt does not
    share with the prompts before it (at least its last), each costing PER_TOKEN × (1 + position / DEPTH_SCALE), after LATENCY; /metrics
    counts the computed words (llama.cpp's counter names)."""

    def __init__(self, context_words: Optional[int] = None) -> None:
        self.computed = 0
        self.seen: list[list[str]] = []
        # None: /v1/models tells the client vLLM's max_model_len; a number: llama.cpp's server, which doesn't say,
        # refusing longer prompts with its own words
        self.context_words = context_words
        self.app = ThreadedApp(self.make_app, "slow test server")

    def cached_words(self, words: list[str]) -> int:
        def shared(other: list[str]) -> int:
            n = 0
            while n < min(len(words), len(other)) and words[n] == other[n]:
                n += 1
            return n
        return max(map(shared, self.seen), default=0)

    async def make_app(self) -> web.Application:
        app = web.Application()
        async def models(request: web.Request) -> web.Response:
            if self.context_words is not None:
                return web.json_response({"data": [{"id": "slow"}]})
            return web.json_response({"data": [{"id": "slow", "max_model_len": 4096}]})

        async def health(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app.router.add_get("/v1/models", models)
        app.router.add_get("/health", health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=f"llamacpp:prompt_tokens_total {self.computed}\nllamacpp:prompt_tokens_cached_total 0\n")

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        longest = max(len(p.split()) for p in prompts)
        if self.context_words is not None and longest > self.context_words:
            return web.json_response({"error": {"code": 400, "type": "exceed_context_size_error", "message":
                f"request ({longest} tokens) exceeds the available context size ({self.context_words} tokens), "
                "try increasing it"}}, status=400)
        seconds = LATENCY
        for prompt in prompts:
            words = prompt.split()
            cached = min(self.cached_words(words), len(words) - 1)  # the last token is computed, as real engines do
            self.seen.append(words)
            seconds += PER_TOKEN * sum(1 + position / DEPTH_SCALE for position in range(cached, len(words)))
            self.computed += len(words) - cached
        await asyncio.sleep(seconds)
        top = {" True": -0.5, " False": -1.2, " maybe": -4.0}
        return web.json_response({"choices": [{"index": i, "text": " True", "logprobs": {
            "tokens": [" True"], "token_logprobs": [-0.5], "top_logprobs": [top], "text_offset": [0]}}
            for i in range(len(prompts))]})


@pytest.fixture
def slow_server():
    server = SlowServer()
    server.app.start()
    yield server
    server.app.stop()


def rate_at(first: int, last: int) -> float:
    """The pretend server's words per second over positions first..last-1."""
    return (last - first) / (PER_TOKEN * sum(1 + position / DEPTH_SCALE for position in range(first, last)))


def test_the_probe_fits_a_servers_prefill_rate_and_latency(slow_server):
    from src.benchmarks.prefill_probe import probe_prefill
    found = probe_prefill(slow_server.app.url, 400, repeats=3, timeout_seconds=10)
    assert found.requests == 7 and found.tokens_counted_by == "/metrics" and found.prefix_tokens == 0
    assert found.long_tokens == 400 and found.short_tokens == 16
    assert found.prefill_rate == pytest.approx(rate_at(16, 400), rel=0.25)
    assert found.request_latency == pytest.approx(LATENCY, abs=0.03)


def test_the_probe_times_tails_behind_a_cached_prefix_at_their_depth(slow_server):
    """A pool score computes short tails deep in the context: the probe times that, and finds the slower rate."""
    from src.benchmarks.prefill_probe import probe_prefill
    found = probe_prefill(slow_server.app.url, 200, prefix_tokens=1500, prompts_per_request=4, repeats=3,
                          timeout_seconds=10)
    assert found.requests == 10 and found.prefix_tokens == 1500 and found.prompts_per_request == 4
    # The server computed only the 4 tails of each request: the untimed request before them cached the prefix.
    assert found.long_tokens == 4 * 200 and found.short_tokens == 4 * 16
    assert found.prefill_rate == pytest.approx(rate_at(1516, 1700), rel=0.25)
    assert found.prefill_rate < 0.8 * rate_at(16, 200)
    assert found.request_latency == pytest.approx(LATENCY, abs=0.03)


def test_a_second_probe_of_the_same_server_is_not_served_from_the_firsts_cache(slow_server):
    """Issue 24: the probe's words came from a fixed seed, so a second plan_run against the same server sent the
    same prompts, and the 'long' ones computed 78 tokens of 1,230 (the rest cached), giving a rate of nothing."""
    from src.benchmarks.prefill_probe import probe_prefill
    first = probe_prefill(slow_server.app.url, 100, repeats=1, timeout_seconds=10)
    second = probe_prefill(slow_server.app.url, 100, repeats=1, timeout_seconds=10)
    # Fresh prompts may share a first word by chance (the pretend server caches word by word); not their tails.
    assert min(first.long_tokens, second.long_tokens) >= 98 and min(first.short_tokens, second.short_tokens) >= 14


def test_a_probe_whose_tails_the_server_already_cached_is_refused(slow_server):
    from src.benchmarks.prefill_probe import probe_prefill
    probe_prefill(slow_server.app.url, 100, repeats=1, timeout_seconds=10, seed=7)
    with pytest.raises(UserError, match="served most of them from its cache"):
        probe_prefill(slow_server.app.url, 100, repeats=1, timeout_seconds=10, seed=7)


def test_the_probes_default_shape_is_the_jobs_mean_prompt_split_at_its_computed_tail():
    from src.benchmarks.run_plan import probe_shape
    cost = PoolScoreCost(pool_size=32, prompts=32, requests=1, prompt_tokens=32 * 1230, computed_tokens=6400,
                         mean_prompt_tokens=1230, simulated_pool_scores_per_iteration=0.1, cache_tokens=46592,
                         block_size=128, tokens_per_demonstration=40)
    assert probe_shape(cost, None, None, 4096) == (1030, 200)
    assert probe_shape(cost, None, None, 1000) == (800, 200)  # the depth is capped, the tail kept
    assert probe_shape(cost, 0, None, 4096) == (0, 200)  # fresh prompts, when asked
    assert probe_shape(cost, None, 500, 4096) == (730, 500)
    assert probe_shape(cost, None, 5000, 4096) == (0, 5000)  # a given tail is kept, and leaves no room for a prefix
    tiny = dataclasses.replace(cost, computed_tokens=320)
    assert probe_shape(tiny, None, None, 4096) == (1230 - 64, 64)  # a tail too short to time is lengthened


def test_the_probes_default_batch_is_the_jobs_prompts_per_request_capped():
    from src.benchmarks.run_plan import PROMPTS_PER_REQUEST_CAP, probe_batch
    ours = PoolScoreCost(pool_size=8, prompts=8, requests=1, prompt_tokens=8 * 300, computed_tokens=800,
                         mean_prompt_tokens=300, simulated_pool_scores_per_iteration=0.1, cache_tokens=8192,
                         block_size=1, tokens_per_demonstration=40)
    assert probe_batch(ours, None) == 8
    assert probe_batch(dataclasses.replace(ours, pool_size=256, prompts=256), None) == PROMPTS_PER_REQUEST_CAP
    reference = dataclasses.replace(ours, requests=12)  # one prompt per request, and its decision queries
    assert probe_batch(reference, None) == 1
    assert probe_batch(ours, 3) == 3


def test_the_planner_takes_the_probes_rate(slow_server, tmp_path, capsys):
    plan, _ = run_plan(tmp_path, capsys, "--K", "5", "--probe", slow_server.app.url, "--probe-tokens", "100",
                         "--probe-repeats", "2", "--probe-timeout", "10")
    prefix = plan["probe"]["prefix_tokens"]
    assert prefix > 0 and f"behind a cached prefix of {prefix} words" in plan["assumptions"]["throughput"]
    assert plan["throughput"]["prefill_rate"] == pytest.approx(rate_at(prefix + 16, prefix + 100), rel=0.3)
    assert plan["probe"]["requests"] == 7 and plan["probe"]["prompts_per_request"] == 8  # the demo pool's 8 prompts
    assert "probed" in plan["assumptions"]["throughput"]
    assert plan["projection"]["job"]["hours"] is not None


def test_a_probe_longer_than_a_llamacpp_servers_context_names_the_flags_to_lower():
    """llama.cpp's server does not say its context in /v1/models, so the probe can't cap its prompts: the refusal
    must name the probe's flags, not the run's pool size."""
    from src.benchmarks.prefill_probe import probe_prefill
    server = SlowServer(context_words=500)
    server.app.start()
    try:
        with pytest.raises(UserError, match="lower --probe-prefix-tokens or --probe-tokens"):
            probe_prefill(server.app.url, 100, prefix_tokens=600, repeats=1, timeout_seconds=10)
    finally:
        server.app.stop()


def test_a_bad_probe_url_is_refused_before_the_simulation(capsys):
    for url in ("ftp://x", ""):
        code, err = call(plan_run, [*SMALL, "--probe", url], capsys)
        refused(code, err, "--probe")
        assert "simulating" not in err


def test_a_probe_of_a_server_that_is_down_ends_with_one_error_line(capsys):
    from tests.conftest import closed_port_url
    code, err = call(plan_run, [*SMALL, "--probe", closed_port_url(), "--probe-timeout", "2"], capsys)
    refused(code, err, "--probe-timeout")  # the probe's own flag, not the VLLM_* settings it replaced


def test_a_finished_runs_summary_calibrates_pool_scores_per_iteration(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"labeller": "icm", "testbed": "demo", "model": "m", "iterations": 24,
                                                  "pool_scores_computed": 6, "settings": {"batch_size": 8}}))
    plan, err = run_plan(tmp_path, capsys, "--K", "10", "--prefill-rate", "1000", "--calibration", run)
    assert plan["projection"]["per_iteration"]["pool_scores"] == 0.25
    assert f"measured in the run {run}" in plan["assumptions"]["pool_scores_per_iteration"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = call(plan_run, [*SMALL, "--calibration", str(empty)], capsys)
    refused(code, err, "without summary.json")
    (run / "summary.json").write_text(json.dumps({"labeller": "random", "iterations": 3, "pool_scores_computed": 1}))
    code, err = call(plan_run, [*SMALL, "--calibration", str(run)], capsys)
    refused(code, err, "not an ICM search")
