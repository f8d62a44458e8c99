"""The benchmark and its engine hooks on the real embedded model, at sizes that take seconds.

The figures that matter (ratios at pool 16 and 64) come from running scripts/benchmark_icm.py itself; here
we check that what it measures is measured right.
"""
import json
import subprocess

import pytest

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.benchmarks.prefix_trie import trie_size
from src.prompts.prompts import leave_one_out_prompts
from src.search.annealing import seed_claims
from src.data.testbeds import load_testbed_claims
from src.experiments import ICM
from tests.cli_helpers import call, load_script, run_script
from tests.stand_in_pipeline import use_stand_in

SMALL = Settings(embedded_ctx_per_slot=2048)


def tqa_claims(data_dir, n):
    import random
    claims, _, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    return list(seed_claims(claims[:n], n, random.Random(0)).values())


@pytest.mark.model
def test_engine_tokenizer_and_counters_agree_on_a_trie_ordered_batch(data_dir):
    prompts = leave_one_out_prompts(tqa_claims(data_dir, 6), "space-in-label", "reference")
    with ModelAPI(settings=SMALL, show_progress=False) as api:
        tokens = api.tokenize(prompts)
        api.next_token_logprobs(prompts)
        stats = api.refresh_stats()
    assert all(isinstance(t, int) for seq in tokens for t in seq)
    # Prompts in pool order walk their trie, so one llama.cpp slot computes exactly the trie.
    assert stats.prompt_tokens == sum(len(t) for t in tokens)
    assert stats.computed_tokens == trie_size(tokens)
    assert 0 < stats.engine_seconds


@pytest.mark.model
def test_prompts_sent_singly_are_one_request_each_with_the_same_answers(data_dir):
    prompts = leave_one_out_prompts(tqa_claims(data_dir, 4), "space-in-label", "reference")
    settings = Settings(embedded_ctx_per_slot=2048)
    with ModelAPI(settings=settings, deterministic=True, show_progress=False) as api:
        batched = api.next_token_logprobs(prompts)
        api.send_prompts_singly()
        before = api.stats.requests
        singly = api.next_token_logprobs(prompts)
        assert api.stats.requests - before == len(prompts)
    assert singly == batched


@pytest.mark.model
def test_benchmark_script_compares_the_two_patterns_and_writes_json(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    # Its own process: it reports the process's peak memory.
    result = run_script("scripts/benchmark_icm.py", "--data-dir", data_dir, "--pool", "4", "--num-seed", "2", "--K", "2",
                        "--rss-K", "3", "--layout-pool", "8", "--json", out, "--no-progress",
                        env={"EMBEDDED_CTX_PER_SLOT": "2048"}, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    ours, reference = report["regimes"]["growing"]["modes"]["ours"], report["regimes"]["growing"]["modes"]["reference"]
    assert ours["requests_per_pool_score"] == 1
    assert reference["requests_per_pool_score"] >= 2  # one request per labeled claim
    assert ours["pool_scores_reused"] >= 0 and reference["pool_scores_reused"] == 0
    for mode in (ours, reference):
        assert 0 < mode["trie_minimum_tokens"] <= mode["prompt_tokens_sent"]
        assert 0 < mode["engine_computed_tokens"] <= mode["prompt_tokens_sent"]
        assert 0 <= mode["client_overhead_share"] < 1 and mode["peak_rss_mb"] > 50
    assert report["regimes"]["growing"]["ratios"]["requests"] == reference["requests"] / ours["requests"]
    assert ours["rss_check"]["K_late"] == 3
    layouts = report["layouts"]
    assert layouts["tree"]["trie_minimum_tokens"] < layouts["reference"]["trie_minimum_tokens"]
    assert layouts["tree"]["prompt_tokens_sent"] == layouts["reference"]["prompt_tokens_sent"]
    assert 0 <= layouts["label_agreement"] <= 1 and layouts["mean_abs_score_difference"] >= 0
    assert {t["target"] for t in report["targets"]} >= {"requests per pool score (ours) [growing]", "wall per iteration, reference / ours [steady]"}
    assert "| requests per pool score" in result.stdout and "Targets:" in result.stdout


def test_icm_runs_with_the_tree_layout_and_a_resume_keeps_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    use_stand_in(monkeypatch, tmp_path)  # the layout is built by the scorer whatever the route; it is recorded here

    def icm(*args):
        code, stderr = call(ICM, args, capsys)
        return subprocess.CompletedProcess(["ICM.py", *args], code, "", stderr)

    result = icm("--testbed", "demo", "--batch_size", "8", "--num_seed", "4", "--K", "3", "--prompt-layout", "tree",
                 "--output-dir", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "run.json").read_text())["settings"]["prompt_layout"] == "tree"
    assert json.loads((out / "summary.json").read_text())["settings"]["prompt_layout"] == "tree"
    refused = icm("--resume", str(out), "--prompt-layout", "reference")
    assert refused.returncode == 2
    assert "started with --prompt-layout 'tree', not 'reference'" in refused.stderr


@pytest.mark.model
def test_prefix_cache_simulation_uses_exact_token_counts(data_dir, tmp_path):
    out = tmp_path / "sim.json"
    result = run_script("scripts/simulate_prefix_cache.py", "--data-dir", data_dir, "--pools", "16",
                        "--capacities", "2000", "100000", "--iterations", "3", "--json", out)
    assert result.returncode == 0, result.stderr
    pool = json.loads(out.read_text())["pools"]["16"]
    # Per-claim tokens, joined, are exactly what the tokenizer makes of the whole prompts.
    assert pool["concatenation_exact"] == {"reference": 1.0, "ours": 1.0}
    assert pool["trie_tokens"]["ours"] < pool["trie_tokens"]["reference"] < pool["naive_tokens"]
    small, large = pool["capacities"]["2000"], pool["capacities"]["100000"]
    for name in ("reference", "ours"):
        assert 0 <= small[name]["hit_rate"] <= large[name]["hit_rate"] < 1
    assert large["ours"]["computed_tokens_per_score"] < large["reference"]["computed_tokens_per_score"]
    assert "| KV cache (tokens) |" in result.stdout


def test_benchmark_refuses_pools_it_cannot_draw(data_dir, capsys):
    benchmark = load_script("benchmark_icm")
    for flags, message in ((["--pool", "6"], "--pool 6 must be a positive multiple of truthfulQA's group size 4"),
                           (["--pool", "4", "--num-seed", "8"], "--num-seed 8 must be even and at most --pool 4"),
                           (["--modes", "fast"], "--modes 'fast': use ours, reference or both")):
        code, stderr = call(benchmark, ["--data-dir", data_dir, *flags], capsys)
        assert code == 2 and message in stderr, stderr


def stand_in_engine(monkeypatch, benchmark, data_dir):
    """The benchmark's engine replaced by the cache model: answers at chance, tokens counted through a prefix cache."""
    from src.benchmarks.block_cache import BlockPrefixCache
    from src.benchmarks.steady_state import BlockTokens, CachedEngineModel
    claims, _, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    tokens = BlockTokens(lambda texts: [[ord(ch) for ch in text] for text in texts])
    monkeypatch.setattr(benchmark, "open_model_api", lambda args: ModelAPI(
        settings=Settings(), show_progress=False,
        route=CachedEngineModel(claims, [c["label"] for c in claims], tokens, BlockPrefixCache(10**7, 16))))


def test_benchmark_reports_both_regimes_per_iteration_and_the_steady_state_labels_nothing_new(data_dir, tmp_path, capsys, monkeypatch):
    benchmark = load_script("benchmark_icm")
    stand_in_engine(monkeypatch, benchmark, data_dir)
    out = tmp_path / "bench.json"
    code, stderr = call(benchmark, ["--data-dir", data_dir, "--pool", "8", "--num-seed", "2", "--K", "12", "--rss-K", "0",
                                    "--layout-pool", "0", "--json", str(out), "--no-progress"], capsys)
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert list(report["regimes"]) == ["growing", "steady"]
    growing, steady = report["regimes"]["growing"], report["regimes"]["steady"]
    assert growing["labelled_at_start"] == 2 and steady["labelled_at_start"] == 8
    for mode in ("ours", "reference"):
        assert steady["modes"][mode]["labelled_at_start"] == 8
        assert steady["modes"][mode]["iterations_labelling_a_new_claim"] == 0  # every iteration is a flip or nothing
        assert growing["modes"][mode]["iterations_labelling_a_new_claim"] > 0
        for entry in (growing, steady):
            figures = entry["modes"][mode]
            first, per = figures["first_scoring"], figures["per_iteration"]
            # The first scoring and the iterations after it add up to the run.
            assert first["requests"] + per["requests"]["total"] == figures["requests"]
            assert first["computed_tokens"] + per["computed_tokens"]["total"] == figures["engine_computed_tokens"]
            assert first["pool_scores"] + per["pool_scores"]["total"] == figures["pool_scores_computed"]
            for spread in per.values():
                assert spread["min"] <= spread["p25"] <= spread["median"] <= spread["p75"] <= spread["max"]
            # Iterations with and without a proposed flip add up to all of them.
            split = figures["by_proposal"]
            assert split["iterations"] == 12 and 0 <= split["proposals"] <= 12
            sides = [split[side]["pool_scores"]["total"] for side in ("per_proposal", "per_other_iteration") if split[side]]
            assert sum(sides) == per["pool_scores"]["total"]
        # Ours reads a prediction from the memoised pool score: an iteration proposing nothing computes nothing.
        other = steady["modes"]["ours"]["by_proposal"]["per_other_iteration"]
        if mode == "ours" and other:
            assert other["pool_scores"]["max"] == 0 and other["requests"]["max"] == 0
    ratios = steady["ratios"]
    ours, reference = steady["modes"]["ours"], steady["modes"]["reference"]
    assert ratios["per_iteration_total_requests"] == reference["per_iteration"]["requests"]["total"] / ours["per_iteration"]["requests"]["total"]
    assert ratios["requests"] == reference["requests"] / ours["requests"]
    benchmark.print_report(report)  # what the run printed (call() keeps only stderr)
    printed = capsys.readouterr().out
    assert "steady: reference / ours" in printed and "growing: reference / ours" in printed
    assert "per iteration, median (IQR)" in printed
    assert printed.count("iterations proposed a flip") == 4  # once per regime and mode


def test_benchmark_regime_flags_keep_the_old_steady_state_command(data_dir, tmp_path, capsys, monkeypatch):
    benchmark = load_script("benchmark_icm")
    stand_in_engine(monkeypatch, benchmark, data_dir)
    out = tmp_path / "bench.json"
    # Before --regime, --num-seed equal to --pool was how the steady state was asked for: it still is.
    code, stderr = call(benchmark, ["--data-dir", data_dir, "--pool", "4", "--num-seed", "4", "--K", "2", "--rss-K", "0",
                                    "--layout-pool", "0", "--modes", "ours", "--layout", "tree-volatility", "--json", str(out),
                                    "--no-progress"], capsys)
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert list(report["regimes"]) == ["steady"]
    assert report["regimes"]["steady"]["modes"]["ours"]["layout"] == "tree-volatility"
    # --regime steady labels the whole pool, so the growing regime's --num-seed limit doesn't apply.
    code, stderr = call(benchmark, ["--data-dir", data_dir, "--pool", "4", "--K", "2", "--rss-K", "0", "--layout-pool", "0",
                                    "--modes", "ours", "--regime", "steady", "--json", str(out), "--no-progress"], capsys)
    assert code == 0, stderr
    for regime in ("growing", "both"):
        code, stderr = call(benchmark, ["--data-dir", data_dir, "--pool", "4", "--num-seed", "4", "--regime", regime], capsys)
        assert code == 2 and f"--regime {regime} needs claims left to label" in stderr, stderr
